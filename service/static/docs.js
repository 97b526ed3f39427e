// Starts Swagger UI on /docs over the app's own OpenAPI document (a file, not an inline
// script, so that the page runs under the dashboard's Content-Security-Policy).
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
