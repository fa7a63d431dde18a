// LogFlow's explore page and permalinks: the URL holds the view, in GET /logs' own parameter names.
//
// Log content comes from other programs: every message, key and value is put
// in the page as text (textContent, createTextNode), never as HTML.
"use strict";

(function () {
  const root = document.getElementById("explore");
  if (!root) return;

  const LEVELS = ["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"];
  const RANGES = { "15m": "Last 15 minutes", "1h": "Last hour", "6h": "Last 6 hours", "24h": "Last 24 hours",
                   "7d": "Last 7 days" };
  // Metadata fields shown beside a message in the list, before it is expanded.
  const SUMMARY_FIELDS = 3;
  // Rows kept in the page: a tab left open all day stays responsive.
  const MAX_ROWS = 1000;
  // Live: how often to ask for new logs, while the tab is seen and while it is hidden.
  const LIVE_INTERVAL_MS = 1000;
  const HIDDEN_INTERVAL_MS = 5000;
  // Ids of logs shown lately, so that one written twice (a redelivered batch) is shown once.
  const SEEN_KEPT = 50000;
  // While live, the histogram is drawn again this often (its counts come from the rollup: cheap).
  const HISTOGRAM_REFRESH_MS = 30000;
  const project = root.dataset.project;
  const api = root.dataset.api;
  const permalinks = root.dataset.permalinks;
  const focusId = root.dataset.log || null; // a permalink's log

  const form = document.getElementById("filters");
  const list = document.getElementById("logs");
  const status = document.getElementById("status");
  const chips = document.getElementById("chips");
  const more = document.getElementById("more");
  const histogram = document.getElementById("histogram");
  let cursor = null;
  let loading = null; // the AbortController of the read under way
  let selected = null; // the row j and k move
  let liveCursor = null; // where the next GET /logs/live starts
  let liveTimer = null;
  let liveFailures = 0;
  let histogramDrawn = 0; // when, by performance.now()
  let pending = []; // live logs held while the person looks elsewhere, oldest first
  let pendingCount = 0;
  const seen = new Set(); // ids, oldest first
  const inPage = new Set(); // ids of the rows in the list: a log is never shown twice
  const liveSwitch = document.getElementById("live");
  const newLogs = document.getElementById("new-logs");

  // ---- the URL -------------------------------------------------------------------------------

  function isFilter(name) {
    return ["q", "level", "min_level", "since", "until"].includes(name) || name.startsWith("meta.");
  }

  function filters() {
    const params = new URLSearchParams();
    for (const [name, value] of new URLSearchParams(location.search)) {
      if (isFilter(name)) params.append(name, value);
    }
    return params;
  }

  function apiUrl(path, params) {
    const all = new URLSearchParams([["project", project]]);
    for (const [name, value] of params) all.append(name, value);
    return path + "?" + all.toString();
  }

  function go(params, replace) {
    const search = params.toString();
    const url = location.pathname + (search ? "?" + search : "");
    if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
    show();
  }

  function isLive() {
    return !focusId && new URLSearchParams(location.search).get("live") === "1";
  }

  function changed(edit) {
    const params = filters();
    edit(params);
    if (isLive()) params.set("live", "1");
    go(params);
  }

  // ---- reading ---------------------------------------------------------------------------------

  async function read(url, signal) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" },
                                        signal });
    if (response.status === 401) {
      location.assign(root.dataset.login + "?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("signed out");
    }
    let body = null;
    try { body = await response.json(); } catch (error) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || ("the server answered " + response.status));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function say(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
    status.hidden = !text;
  }

  async function show() {
    if (loading) loading.abort();
    loading = new AbortController();
    const signal = loading.signal;
    stopLive();
    fillForm();
    showChips();
    list.replaceChildren();
    inPage.clear();
    cursor = null;
    selected = null;
    more.hidden = true;
    say("Loading…");
    try {
      if (focusId) {
        await showContext(signal);
      } else {
        // The feed's position first, then the page: a log stored in between comes in
        // both, and is shown once.
        let liveError = null;
        if (isLive()) {
          try {
            liveCursor = (await read(apiUrl(api + "/live", filters()), signal)).cursor;
          } catch (error) {
            if (error.name === "AbortError") throw error;
            liveError = error; // the list can still be read
          }
        }
        await showPage(signal);
        if (liveError) {
          say("Live is unavailable: " + liveError.message + ". Switch it off and on to try again.", true);
          return;
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") say(error.message, true);
      return;
    }
    if (isLive()) startLive(signal);
    if (!focusId) showHistogram(signal).catch((error) => {
      if (error.name !== "AbortError") histogram.replaceChildren(text("p", "note", error.message));
    });
  }

  async function showPage(signal) {
    const page = await read(apiUrl(api, filters()), signal);
    append(page.logs);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    say(page.logs.length ? "" : "No logs match.");
  }

  async function loadMore() {
    if (!cursor || !loading || more.disabled) return;
    more.disabled = true;
    const from = cursor;
    const params = filters();
    params.set("cursor", from);
    try {
      const page = await read(apiUrl(api, params), loading.signal);
      // Live dropped the oldest rows meanwhile (or the view changed): this page would leave a hole.
      if (cursor !== from) return;
      append(page.logs);
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (error) {
      if (error.name !== "AbortError") say(error.message, true);
    } finally {
      more.disabled = false;
    }
  }

  async function showContext(signal) {
    const context = await read(apiUrl(api + "/" + encodeURIComponent(focusId) + "/context", filters()), signal);
    const rows = [...context.after].reverse().concat([context.log], [...context.before].reverse());
    append(rows);
    say("");
    const row = list.querySelector("[data-id=\"" + CSS.escape(context.log.id) + "\"]");
    row.setAttribute("aria-current", "true");
    row.classList.add("focused");
    expand(row, true);
    select(row);
    // In the middle, not at an edge: the logs just before and after it are what the page is for.
    row.scrollIntoView({ block: "center" });
  }

  function append(logs) {
    const fragment = document.createDocumentFragment();
    for (const log of logs) {
      // An older page holds a log that live showed at the top already (a late timestamp).
      if (inPage.has(log.id)) continue;
      inPage.add(log.id);
      remember(log.id);
      fragment.append(row(log));
    }
    list.append(fragment);
  }

  function remember(id) {
    seen.add(id);
    if (seen.size > SEEN_KEPT) seen.delete(seen.values().next().value);
  }

  // ---- one log ---------------------------------------------------------------------------------

  // Characters that reorder the text around them (a right-to-left override makes "exe.pdf" of
  // "fdp.exe"): shown as their code, so that a log cannot disguise what it says.
  const BIDI_CONTROLS = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

  function visible(content) {
    return String(content).replace(BIDI_CONTROLS, (character) =>
      "\u27e6U+" + character.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e7");
  }

  function text(tag, className, content) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    element.textContent = visible(content);
    return element;
  }

  function timeElement(iso, className, short) {
    const element = text("time", className, localTime(iso, short));
    element.dateTime = iso;
    element.title = iso.replace("T", " ").replace("Z", " UTC");
    return element;
  }

  function localTime(iso, short) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    // The list's rows are read down a column: month and day suffice there.
    const day = short ? { month: "short", day: "2-digit" } : { year: "numeric", month: "2-digit", day: "2-digit" };
    return date.toLocaleString(undefined, { ...day, hour: "2-digit", minute: "2-digit", second: "2-digit",
                                            fractionalSecondDigits: 3 });
  }

  function shortValue(value) {
    const shown = typeof value === "string" ? value : JSON.stringify(value);
    return shown.length > 80 ? shown.slice(0, 79) + "…" : shown;
  }

  function row(log) {
    const item = document.createElement("li");
    item.className = "log";
    item.dataset.id = log.id;
    const summary = document.createElement("button");
    summary.type = "button";
    summary.className = "summary";
    summary.setAttribute("aria-expanded", "false");
    const level = text("span", "level level-" + log.level.toLowerCase(), log.level);
    const firstLine = log.message.split("\n", 1)[0];
    const message = text("span", "message", firstLine.length > 500 ? firstLine.slice(0, 500) + "…" : firstLine);
    const fields = document.createElement("span");
    fields.className = "fields";
    const metadata = log.metadata && typeof log.metadata === "object" ? log.metadata : {};
    for (const key of Object.keys(metadata).slice(0, SUMMARY_FIELDS)) {
      fields.append(text("span", "field", key + "=" + shortValue(metadata[key])));
    }
    summary.append(timeElement(log.timestamp, "time", true), level, message, fields);
    summary.addEventListener("click", () => { select(item); expand(item); });
    item.append(summary);
    item.log = log;
    return item;
  }

  function expand(item, open) {
    const summary = item.querySelector(".summary");
    const isOpen = summary.getAttribute("aria-expanded") === "true";
    const wanted = open === undefined ? !isOpen : open;
    summary.setAttribute("aria-expanded", String(wanted));
    let detail = item.querySelector(".detail");
    if (wanted && !detail) {
      detail = details(item.log);
      item.append(detail);
    }
    if (detail) detail.hidden = !wanted;
  }

  function copyButton(label, value) {
    const button = text("button", "copy", "Copy");
    button.type = "button";
    button.setAttribute("aria-label", label);
    button.addEventListener("click", () => copy(value, button));
    return button;
  }

  async function copy(value, button) {
    try {
      await navigator.clipboard.writeText(value);
      // For a moment only: "Copy as curl" has no other name, and its next query is not copied yet.
      if (!button.dataset.label) button.dataset.label = button.textContent; // a second click keeps the first
      button.textContent = "Copied";
      clearTimeout(button.restore);
      button.restore = setTimeout(() => { button.textContent = button.dataset.label; }, 2000);
    } catch (error) {
      // Without a secure context there is no clipboard: show the text to copy by hand.
      window.prompt("Copy this:", value);
    }
  }

  function details(log) {
    const detail = document.createElement("div");
    detail.className = "detail";
    detail.append(text("pre", "full-message", log.message));
    const facts = document.createElement("dl");
    facts.className = "facts";
    const permalink = permalinks + encodeURIComponent(log.id) + location.search;
    for (const [label, value, element] of [
      ["Id", log.id, text("code", "", log.id)],
      ["Time", log.timestamp, timeElement(log.timestamp)],
      ["Received", log.received_at, timeElement(log.received_at)],
    ]) {
      facts.append(text("dt", "", label));
      const cell = document.createElement("dd");
      cell.append(element, " ", copyButton("Copy " + label.toLowerCase(), value));
      facts.append(cell);
    }
    facts.append(text("dt", "", "Link"));
    const linkCell = document.createElement("dd");
    const link = text("a", "", "Permalink");
    link.href = permalink;
    linkCell.append(link);
    facts.append(linkCell);
    detail.append(facts);
    const metadata = log.metadata && typeof log.metadata === "object" ? log.metadata : {};
    if (Object.keys(metadata).length) {
      const tree = document.createElement("div");
      tree.className = "metadata-tree";
      tree.append(text("h2", "", "Metadata"), jsonTree(metadata, []),
                  copyButton("Copy metadata as JSON", JSON.stringify(metadata, null, 2)));
      detail.append(tree);
    }
    return detail;
  }

  // Metadata as collapsible JSON: objects and lists fold; each value can become a filter.
  function jsonTree(value, path) {
    const items = document.createElement("ul");
    items.className = "tree";
    const entries = Array.isArray(value) ? value.map((item, index) => [String(index), item])
                                         : Object.entries(value);
    for (const [key, item] of entries) {
      const entry = document.createElement("li");
      const keyText = text("span", "key", Array.isArray(value) ? "[" + key + "]" : key);
      if (item !== null && typeof item === "object") {
        const fold = document.createElement("details");
        fold.open = path.length < 2;
        const summary = document.createElement("summary");
        const size = Array.isArray(item) ? item.length + " items" : Object.keys(item).length + " keys";
        summary.append(keyText, text("span", "note", " " + (Array.isArray(item) ? "[ ]" : "{ }") + " " + size));
        fold.append(summary, jsonTree(item, Array.isArray(value) ? path : path.concat([key])));
        entry.append(fold);
      } else {
        entry.append(keyText, text("span", "value value-" + (item === null ? "null" : typeof item),
                                   item === null ? "null" : typeof item === "string" ? item : String(item)));
        if (!Array.isArray(value)) entry.append(filterButtons(path.concat([key]), item));
      }
      items.append(entry);
    }
    return items;
  }

  function filterValue(value) {
    return value === null ? "null" : String(value);
  }

  function filterButtons(path, value) {
    const name = "meta." + path.join(".");
    const shown = path.join(".") + " = " + shortValue(filterValue(value));
    const group = document.createElement("span");
    group.className = "filter-buttons";
    for (const [label, suffix, verb] of [["+", "", "Filter for"], ["−", "!", "Filter out"]]) {
      const button = text("button", "filter", label);
      button.type = "button";
      button.setAttribute("aria-label", verb + " " + shown);
      button.title = verb + " " + shown;
      // Dots inside a key cannot be told from the path's own: such a key has no filter. Nor have true, false
      // and null: GET /logs matches strings and numbers only, so the filter would match no log, not even this one.
      button.disabled = path.some((key) => key.includes(".") || key === "") || value === null ||
                        typeof value === "boolean";
      button.addEventListener("click", () => changed((params) => {
        // The opposite filter on this value goes; the same one, clicked again from another log, stays one chip.
        params.delete(name + (suffix ? "" : "!"), filterValue(value));
        params.delete(name + suffix, filterValue(value));
        params.append(name + suffix, filterValue(value));
      }));
      group.append(button);
    }
    return group;
  }

  // ---- the form and the chips -----------------------------------------------------------------

  function levelsOf(params) {
    let levels = new Set(LEVELS);
    const named = params.getAll("level").flatMap((value) => value.split(",")).map((name) => name.trim().toUpperCase());
    if (named.length) levels = new Set(named.filter((name) => LEVELS.includes(name)));
    const lowest = LEVELS.indexOf((params.get("min_level") || "").toUpperCase());
    if (lowest > 0) levels = new Set([...levels].filter((name) => LEVELS.indexOf(name) >= lowest));
    return levels;
  }

  function toLocalInput(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 19);
  }

  function fillForm() {
    const params = filters();
    form.elements.q.value = params.get("q") || "";
    const levels = levelsOf(params);
    for (const box of form.querySelectorAll("input[name=level]")) box.checked = levels.has(box.value);
    const since = params.get("since") || "";
    const until = params.get("until") || "";
    const range = form.elements.range;
    range.value = !since && !until ? "" : since in RANGES && !until ? since : "custom";
    form.elements.from.value = range.value === "custom" && since && !(since in RANGES) ? toLocalInput(since) : "";
    form.elements.to.value = range.value === "custom" && until ? toLocalInput(until) : "";
    showCustom();
  }

  function showCustom() {
    form.querySelector(".custom").hidden = form.elements.range.value !== "custom";
  }

  function fromLocalInput(value) {
    if (!value) return "";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? "" : date.toISOString();
  }

  function submit(event) {
    event.preventDefault();
    changed((params) => {
      const q = form.elements.q.value.trim();
      if (q) params.set("q", q); else params.delete("q");
      const checked = [...form.querySelectorAll("input[name=level]:checked")].map((box) => box.value);
      params.delete("level");
      params.delete("min_level");
      if (checked.length && checked.length < LEVELS.length) params.set("level", checked.join(","));
      const range = form.elements.range.value;
      params.delete("since");
      params.delete("until");
      if (range in RANGES) params.set("since", range);
      if (range === "custom") {
        const since = fromLocalInput(form.elements.from.value);
        const until = fromLocalInput(form.elements.to.value);
        if (since) params.set("since", since);
        if (until) params.set("until", until);
      }
    });
  }

  function showChips() {
    chips.replaceChildren();
    for (const [name, value] of filters()) {
      if (!name.startsWith("meta.")) continue;
      const excluded = name.endsWith("!");
      const label = name.slice(5).replace(/!$/, "") + (excluded ? " ≠ " : " = ") + value;
      const chip = document.createElement("li");
      chip.className = "chip" + (excluded ? " excluded" : "");
      const remove = text("button", "remove", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", "Remove filter " + label);
      remove.addEventListener("click", () => changed((params) => params.delete(name, value)));
      chip.append(text("span", "", label), remove);
      chips.append(chip);
    }
    chips.hidden = !chips.children.length;
  }

  // ---- the histogram -------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  async function showHistogram(signal) {
    const params = filters();
    const answer = await read(apiUrl(api + "/histogram", params), signal);
    histogramDrawn = performance.now();
    const width = 1000;
    const height = 120;
    const most = Math.max(1, ...answer.buckets.map((bucket) => bucket.total));
    const barWidth = width / answer.buckets.length;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "bars");
    let dragFrom = null;
    answer.buckets.forEach((bucket, index) => {
      const group = document.createElementNS(SVG, "g");
      const start = new Date(bucket.start);
      const end = new Date(start.getTime() + answer.interval_ms);
      const label = localTime(start.toISOString()) + " to " + localTime(end.toISOString()) + ": " + bucket.total +
                    (bucket.total === 1 ? " log" : " logs");
      group.setAttribute("class", "bucket");
      group.setAttribute("role", "button");
      // One tab stop for the whole chart (the newest bar); arrow keys move between bars.
      group.setAttribute("tabindex", index === answer.buckets.length - 1 ? "0" : "-1");
      group.setAttribute("aria-label", label);
      const hit = document.createElementNS(SVG, "rect"); // the whole column answers the pointer
      hit.setAttribute("x", index * barWidth);
      hit.setAttribute("y", 0);
      hit.setAttribute("width", barWidth);
      hit.setAttribute("height", height);
      hit.setAttribute("class", "hit");
      const title = document.createElementNS(SVG, "title");
      title.textContent = label;
      group.append(title, hit);
      let top = height;
      for (const level of LEVELS) {
        const count = bucket.counts[level] || 0;
        if (!count) continue;
        const barHeight = Math.max(1, (count / most) * (height - 4));
        top -= barHeight;
        const bar = document.createElementNS(SVG, "rect");
        bar.setAttribute("x", index * barWidth + barWidth * 0.1);
        bar.setAttribute("width", barWidth * 0.8);
        bar.setAttribute("y", top);
        bar.setAttribute("height", barHeight);
        bar.setAttribute("class", "bar level-" + level.toLowerCase());
        group.append(bar);
      }
      const narrow = (from, to) => changed((params) => {
        params.set("since", new Date(Math.min(from, to)).toISOString());
        params.set("until", new Date(Math.max(from, to) + answer.interval_ms).toISOString());
      });
      group.addEventListener("pointerdown", (event) => { dragFrom = start.getTime(); event.preventDefault(); });
      group.addEventListener("pointerup", () => {
        if (dragFrom !== null) narrow(dragFrom, start.getTime());
        dragFrom = null;
      });
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); narrow(start.getTime(), start.getTime()); }
        const step = { ArrowLeft: -1, ArrowRight: 1, Home: -index, End: answer.buckets.length - 1 - index }[event.key];
        const next = step === undefined ? null : svg.children[index + step];
        if (next) {
          event.preventDefault();
          group.setAttribute("tabindex", "-1");
          next.setAttribute("tabindex", "0");
          next.focus();
        }
      });
      svg.append(group);
    });
    svg.addEventListener("pointerleave", () => { dragFrom = null; });
    const caption = text("p", "note", answer.total + (answer.total === 1 ? " log" : " logs") + " from " +
                         localTime(answer.since) + " to " + localTime(answer.until) + ", " +
                         interval(answer.interval_ms) + " a bar. Click a bar, or drag across bars, to narrow the range.");
    histogram.replaceChildren(svg, caption);
  }

  function interval(ms) {
    for (const [unit, size] of [["day", 86400000], ["hour", 3600000], ["minute", 60000], ["second", 1000]]) {
      if (ms >= size && ms % size === 0) return ms / size + " " + unit + (ms === size ? "" : "s");
    }
    return ms + " ms";
  }

  // ---- live --------------------------------------------------------------------------------------
  //
  // Polls GET /logs/live with the page's own filters and the cursor it gave:
  // short requests, so no connection is held open per viewer (nothing to break
  // behind a proxy, no worker thread taken from POST /logs).

  function startLive(signal) {
    liveFailures = 0;
    say(list.children.length ? "" : "No logs match yet. Live: new ones appear here.");
    liveTimer = setTimeout(() => poll(signal), LIVE_INTERVAL_MS);
  }

  function stopLive() {
    clearTimeout(liveTimer);
    liveTimer = null;
    pending = [];
    pendingCount = 0;
    newLogs.hidden = true;
    if (liveSwitch) liveSwitch.checked = isLive();
  }

  async function poll(signal) {
    let delay = document.hidden ? HIDDEN_INTERVAL_MS : LIVE_INTERVAL_MS;
    try {
      const params = filters();
      params.set("cursor", liveCursor);
      const answer = await read(apiUrl(api + "/live", params), signal);
      if (signal.aborted) return;
      if (answer.gap) {
        // Logs were dropped from the feed before this page read them: start again from now.
        show();
        return;
      }
      liveCursor = answer.cursor;
      if (liveFailures) say("");
      liveFailures = 0;
      receive(answer.logs);
      if (answer.more && !document.hidden) delay = 0;
      // Only a histogram the per-minute counts serve is refreshed: with q or meta.* it reads the rows.
      const counted = ![...filters().keys()].some((name) => name === "q" || name.startsWith("meta."));
      if (histogram && counted && !document.hidden && performance.now() - histogramDrawn > HISTOGRAM_REFRESH_MS) {
        histogramDrawn = performance.now(); // one refresh at a time, and after a failure the next in 30 s
        // On failure the last drawing stays, and the next refresh tries again.
        showHistogram(signal).catch((error) => console.warn("the histogram was not refreshed:", error));
      }
    } catch (error) {
      if (error.name === "AbortError" || signal.aborted) return;
      if (error.status === 429) {
        // The server is busy with other viewers' polls: ask again soon, from the same cursor.
        liveTimer = setTimeout(() => poll(signal), LIVE_INTERVAL_MS * (1 + Math.random()));
        return;
      }
      liveFailures += 1;
      delay = Math.min(30000, LIVE_INTERVAL_MS * 2 ** liveFailures);
      say("Live: " + error.message + ". Trying again in " + Math.round(delay / 1000) + " s.", true);
    }
    liveTimer = setTimeout(() => poll(signal), delay);
  }

  function lookingElsewhere() {
    return document.hidden || list.getBoundingClientRect().top < -20;
  }

  function receive(logs) {
    const fresh = logs.filter((log) => !seen.has(log.id) && !inPage.has(log.id));
    for (const log of fresh) remember(log.id);
    if (!fresh.length) return;
    if (pending.length || lookingElsewhere()) {
      pending.push(...fresh);
      pendingCount += fresh.length;
      pending = pending.slice(-MAX_ROWS);
      newLogs.textContent = pendingCount + " new" +
        (pendingCount > pending.length ? " (the newest " + pending.length + " are kept)" : "");
      newLogs.hidden = false;
    } else {
      prepend(fresh);
    }
  }

  function prepend(logs) {
    // Written order, latest on top; no more than the page keeps.
    const fragment = document.createDocumentFragment();
    for (const log of logs.slice(-MAX_ROWS).reverse()) {
      inPage.add(log.id);
      const item = row(log);
      item.classList.add("arrived");
      fragment.append(item);
    }
    list.prepend(fragment);
    if (list.children.length) say("");
    let dropped = 0;
    while (list.children.length > MAX_ROWS) {
      if (list.lastElementChild === selected) selected = null;
      inPage.delete(list.lastElementChild.dataset.id);
      list.lastElementChild.remove();
      dropped += 1;
    }
    if (dropped && cursor) {
      // The oldest rows went to keep the page fast; the cursor would skip them.
      cursor = null;
      more.hidden = true;
    }
  }

  function catchUp() {
    const held = pending;
    pending = [];
    pendingCount = 0;
    newLogs.hidden = true;
    prepend(held);
  }

  // ---- keyboard ------------------------------------------------------------------------------

  function select(item) {
    if (selected) selected.classList.remove("selected");
    selected = item;
    if (item) {
      item.classList.add("selected");
      item.querySelector(".summary").focus({ preventScroll: true });
      item.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    const rows = [...list.children];
    if (!rows.length) return;
    const index = selected ? rows.indexOf(selected) : -1;
    const next = rows[Math.min(rows.length - 1, Math.max(0, index + step))];
    select(next);
    if (step > 0 && next === rows[rows.length - 1]) loadMore();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    // A checkbox or a switch takes no text: the shortcuts work from it.
    const typing = event.target.closest("input:not([type=checkbox]):not([type=radio]), select, textarea");
    if (event.key === "Escape") {
      // preventDefault: Esc in a search field would also empty it, while its text still filters the list.
      if (typing) { event.preventDefault(); event.target.blur(); return; }
      if (selected) expand(selected, false);
      return;
    }
    if (typing) return;
    if (event.key === "/") { event.preventDefault(); form.elements.q.focus(); form.elements.q.select(); }
    else if (event.key === "j") { event.preventDefault(); move(1); }
    else if (event.key === "k") { event.preventDefault(); move(-1); }
  });

  // ---- copy as curl --------------------------------------------------------------------------

  function curl() {
    const url = new URL(focusId ? api + "/" + encodeURIComponent(focusId) + "/context" : api, location.origin);
    for (const [name, value] of filters()) url.searchParams.append(name, value);
    return "curl -H \"X-API-Key: $LOGFLOW_READ_KEY\" '" + url.toString().replace(/'/g, "%27") + "'";
  }

  // ---- saving the view -----------------------------------------------------------------------

  // "Save search" sends the view's query string; the server keeps its filters, not its time range.
  const saveSearch = document.getElementById("save-search");
  if (saveSearch) {
    saveSearch.addEventListener("submit", () => { saveSearch.elements.query.value = location.search.slice(1); });
  }

  // ---- start ---------------------------------------------------------------------------------

  form.addEventListener("submit", submit);
  form.elements.range.addEventListener("change", showCustom);
  document.getElementById("copy-curl").addEventListener("click", (event) => copy(curl(), event.currentTarget));
  more.addEventListener("click", loadMore);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) loadMore();
    }, { rootMargin: "400px" }).observe(more);
  }
  window.addEventListener("popstate", show);
  if (liveSwitch) {
    liveSwitch.addEventListener("change", () => {
      const params = new URLSearchParams(location.search);
      if (liveSwitch.checked) params.set("live", "1"); else params.delete("live");
      go(params);
    });
  }
  newLogs.addEventListener("click", () => {
    catchUp();
    window.scrollTo({ top: 0 });
  });
  window.addEventListener("scroll", () => {
    if (pending.length && !lookingElsewhere()) catchUp();
  }, { passive: true });
  root.maxRows = MAX_ROWS;
  show();
})();
