// The API docs page (CONTRACT 3.4): Swagger UI on this server's OpenAPI
// document. The shell loads without a token; when the server answers 401
// (to the document or to a "Try it out"), this asks for one, keeps it in
// the tab's sessionStorage under the dashboard's key (one entry serves
// both pages), and adds it as a bearer header to every request Swagger UI
// makes. A file, not an inline script, so the page's CSP allows it.

const TOKEN_KEY = "instance-api-token";
const slot = document.getElementById("token");
const swagger = document.getElementById("swagger-ui");
let specLoaded = false;

function ask(refused) {
  if (slot.firstChild) return;
  // Until the document loads there is nothing to show but Swagger's error.
  swagger.hidden = !specLoaded;
  const input = document.createElement("input");
  Object.assign(input, {type: "password", name: "token", required: true, autocomplete: "off"});
  const heading = document.createElement("h2");
  heading.textContent = "API token";
  const note = document.createElement("p");
  if (refused) note.className = "refused";
  note.textContent = refused ? "The server refused that token. Enter another one."
    : "This server asks for a token: for its API description and for every request.";
  const label = document.createElement("label");
  label.append("Token ", input);
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = specLoaded ? "Use this token" : "Show the API";
  const form = document.createElement("form");
  form.className = "token";
  form.append(heading, note, label, " ", button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    // Without the document, Swagger UI starts over; with it, the next
    // "Execute" carries the new token.
    if (!specLoaded) location.reload();
    slot.replaceChildren();
  });
  slot.replaceChildren(form);
  input.focus();
}

window.ui = window.SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  requestInterceptor(request) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    // A token given through Swagger's own "Authorize" button wins.
    if (token && !request.headers.Authorization) request.headers.Authorization = `Bearer ${token}`;
    return request;
  },
  responseInterceptor(response) {
    if (response.status === 401) {
      const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
      sessionStorage.removeItem(TOKEN_KEY);
      ask(refused);
    } else if (response.ok && new URL(response.url, location.href).pathname === "/api/openapi.json") {
      specLoaded = true;
    }
    return response;
  },
});
