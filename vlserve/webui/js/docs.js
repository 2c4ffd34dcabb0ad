// /docs: this server's OpenAPI document (/openapi.json) in Swagger UI, vendored with the page
// (nothing is fetched from elsewhere). "Try it out" sends its requests to this server with
// the API key the chat page keeps, if any (the Authorize button sets another).

import { authHeaders } from "./auth.js";

window.SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  deepLinking: true,
  validatorUrl: null,             // its default asks a public validator service: never
  requestInterceptor: (request) => {
    if (!request.headers.Authorization) Object.assign(request.headers, authHeaders());
    return request;
  },
});
