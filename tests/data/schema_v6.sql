-- The tables, indexes and trigger that schema version 6 (the release before labels)
-- created on SQLite, as its create_tables made them.
CREATE TABLE "idempotency_key" ("key" TEXT NOT NULL PRIMARY KEY, "fingerprint" TEXT NOT NULL, "status" INTEGER NOT NULL, "body" TEXT NOT NULL, "location" TEXT, "created_at" DATETIME NOT NULL);
CREATE INDEX "idempotencykey_created_at" ON "idempotency_key" ("created_at");
CREATE TABLE "instance" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL, "site_id" TEXT NOT NULL, "user_id" TEXT NOT NULL, "name" TEXT NOT NULL, "instance_type" TEXT NOT NULL, "status" TEXT NOT NULL, "agent_id" TEXT, "configuration" TEXT NOT NULL, "environment_variables" TEXT NOT NULL, "log_count" INTEGER NOT NULL DEFAULT 0);
CREATE INDEX "instance_created_at_id" ON "instance" ("created_at", "id");
CREATE INDEX "instance_site_id_created_at_id" ON "instance" ("site_id", "created_at", "id");
CREATE INDEX "instance_status_created_at_id" ON "instance" ("status", "created_at", "id");
CREATE INDEX "instance_site_id_status_created_at_id" ON "instance" ("site_id", "status", "created_at", "id");
CREATE INDEX "instance_user_id_created_at_id" ON "instance" ("user_id", "created_at", "id");
CREATE INDEX "instance_agent_id_created_at_id" ON "instance" ("agent_id", "created_at", "id");
CREATE INDEX "instance_instance_type_created_at_id" ON "instance" ("instance_type", "created_at", "id");
CREATE INDEX "instance_name" ON "instance" ("name");
CREATE INDEX "instance_updated_at" ON "instance" ("updated_at");
CREATE INDEX "instance_status_rank" ON "instance" ((CASE "status" WHEN 'pending' THEN 0 WHEN 'starting' THEN 1 WHEN 'running' THEN 2 WHEN 'paused' THEN 3 WHEN 'stopping' THEN 4 WHEN 'stopped' THEN 5 WHEN 'terminated' THEN 6 WHEN 'error' THEN 7 END));
CREATE TABLE "instance_log" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "instance_id" TEXT NOT NULL, "log_type" TEXT NOT NULL, "level" TEXT NOT NULL, "message" TEXT NOT NULL, "details" TEXT NOT NULL, FOREIGN KEY ("instance_id") REFERENCES "instance" ("id") ON DELETE CASCADE);
CREATE INDEX "instance_log_instance_id_created_at_id" ON "instance_log" ("instance_id", "created_at", "id");
CREATE INDEX "instance_log_instance_id_log_type_created_at_id" ON "instance_log" ("instance_id", "log_type", "created_at", "id");
CREATE INDEX "instance_log_instance_id_level_created_at_id" ON "instance_log" ("instance_id", "level", "created_at", "id");
CREATE TABLE "instance_plan" ("id" TEXT NOT NULL PRIMARY KEY, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL, "instance_id" TEXT NOT NULL, "parent_id" TEXT, "title" TEXT NOT NULL, "description" TEXT, "plan_type" TEXT NOT NULL, "status" TEXT NOT NULL, "priority" INTEGER NOT NULL, "instructions" TEXT, "started_at" DATETIME, "completed_at" DATETIME, FOREIGN KEY ("instance_id") REFERENCES "instance" ("id") ON DELETE CASCADE, FOREIGN KEY ("parent_id") REFERENCES "instance_plan" ("id") ON DELETE SET NULL);
CREATE INDEX "instance_plan_instance_id_created_at_id" ON "instance_plan" ("instance_id", "created_at", "id");
CREATE INDEX "instance_plan_instance_id_status_created_at_id" ON "instance_plan" ("instance_id", "status", "created_at", "id");
CREATE INDEX "instance_plan_instance_id_plan_type_created_at_id" ON "instance_plan" ("instance_id", "plan_type", "created_at", "id");
CREATE INDEX "instance_plan_parent_id_created_at_id" ON "instance_plan" ("parent_id", "created_at", "id");
CREATE TABLE "schema_version" ("version" INTEGER NOT NULL PRIMARY KEY);
CREATE TRIGGER instance_log_counted AFTER INSERT ON instance_log
    BEGIN
        UPDATE instance SET log_count = log_count + 1 WHERE id = NEW.instance_id;
    END;
INSERT INTO schema_version VALUES (6);
