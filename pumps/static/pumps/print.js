// Print buttons (the worksheet): a listener from a file, as the content security policy
// refuses inline onclick handlers.
"use strict";
document.querySelectorAll("[data-pt-print]").forEach((button) => {
  button.addEventListener("click", () => window.print());
});
