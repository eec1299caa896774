-- The tables and indexes the first release (schema version 1) created.
CREATE TABLE "instance" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL, "site_id" TEXT NOT NULL, "user_id" TEXT NOT NULL, "name" TEXT NOT NULL, "instance_type" TEXT NOT NULL, "status" TEXT NOT NULL, "agent_id" TEXT, "configuration" TEXT NOT NULL, "environment_variables" TEXT NOT NULL);
CREATE INDEX "instance_created_at_id" ON "instance" ("created_at", "id");
CREATE INDEX "instance_site_id_created_at_id" ON "instance" ("site_id", "created_at", "id");
CREATE INDEX "instance_status_created_at_id" ON "instance" ("status", "created_at", "id");
CREATE INDEX "instance_site_id_status_created_at_id" ON "instance" ("site_id", "status", "created_at", "id");
CREATE TABLE "instance_log" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "instance_id" TEXT NOT NULL, "log_type" TEXT NOT NULL, "level" TEXT NOT NULL, "message" TEXT NOT NULL, "details" TEXT NOT NULL, FOREIGN KEY ("instance_id") REFERENCES "instance" ("id") ON DELETE CASCADE);
CREATE INDEX "instance_log_instance_id_created_at_id" ON "instance_log" ("instance_id", "created_at", "id");
CREATE INDEX "instance_log_instance_id_log_type_created_at_id" ON "instance_log" ("instance_id", "log_type", "created_at", "id");
CREATE INDEX "instance_log_instance_id_level_created_at_id" ON "instance_log" ("instance_id", "level", "created_at", "id");
CREATE TABLE "instance_plan" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL, "instance_id" TEXT NOT NULL, "title" TEXT NOT NULL, "description" TEXT, "plan_type" TEXT NOT NULL, "status" TEXT NOT NULL, "priority" INTEGER NOT NULL, "instructions" TEXT, FOREIGN KEY ("instance_id") REFERENCES "instance" ("id") ON DELETE CASCADE);
CREATE INDEX "instance_plan_instance_id_created_at_id" ON "instance_plan" ("instance_id", "created_at", "id");
CREATE INDEX "instance_plan_instance_id_status_created_at_id" ON "instance_plan" ("instance_id", "status", "created_at", "id");
CREATE INDEX "instance_plan_instance_id_plan_type_created_at_id" ON "instance_plan" ("instance_id", "plan_type", "created_at", "id");
