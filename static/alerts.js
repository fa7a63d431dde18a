// LogFlow's alert pages: times written by the server in UTC are shown in the browser's time zone (UTC kept on
// hover), and a copy button copies the text it names. The pages read fully without this script.
"use strict";

(function () {
  const SECONDS = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
                    second: "2-digit" };

  for (const element of document.querySelectorAll("time.local")) {
    const date = new Date(element.dateTime);
    if (!Number.isNaN(date.getTime())) element.textContent = date.toLocaleString(undefined, SECONDS);
  }

  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    button.hidden = false;
    button.addEventListener("click", async () => {
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (error) {
        // No clipboard (a page not served over HTTPS): select the text, for Ctrl+C.
        window.getSelection().selectAllChildren(source);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }
})();
