// LogFlow's overview: times are written by the server in UTC; this shows them in the browser's time zone,
// with UTC kept on hover, and reloads the page every minute. The page reads fully without it.
"use strict";

(function () {
  function localTime(iso, options) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? null : date.toLocaleString(undefined, options);
  }

  const SECONDS = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
                    second: "2-digit" };
  const MINUTES = { hour: "2-digit", minute: "2-digit" };

  for (const element of document.querySelectorAll("time.local")) {
    const shown = localTime(element.dateTime, SECONDS);
    if (shown) element.textContent = shown;
  }

  // A chart bar's tooltip: its logs, from and to in local time.
  for (const bucket of document.querySelectorAll(".spark .bucket")) {
    const from = localTime(bucket.dataset.start, MINUTES);
    const to = localTime(bucket.dataset.end, MINUTES);
    const title = bucket.querySelector("title");
    if (from && to && title) title.textContent = bucket.dataset.label + " from " + from + " to " + to;
  }

  // Kept open all day: the numbers are read again every minute, while someone can see them.
  const REFRESH_MS = 60000;
  const loaded = Date.now();
  function refresh() {
    if (document.visibilityState === "visible" && Date.now() - loaded >= REFRESH_MS) location.reload();
  }
  setInterval(refresh, REFRESH_MS);
  document.addEventListener("visibilitychange", refresh);
})();
