// Starts Swagger UI on /docs. A file, not an inline script, so the page's
// Content-Security-Policy can allow scripts from 'self' only.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayOperationId: false,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    docExpansion: "list",
    filter: true,
    showExtensions: true,
    showCommonExtensions: true,
    tryItOutEnabled: false,
    persistAuthorization: false,
    validatorUrl: null, // the default would send the document to an external validator
    onComplete: function () {
      var info = window.ui.specSelectors.info();
      if (info && info.get("title")) {
        document.title = info.get("title") + " - API documentation";
      }
    }
  });
})();
