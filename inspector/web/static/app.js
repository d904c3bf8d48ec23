// rddn-inspector review page: fragments fetched from the server and swapped in place (no page reloads, no build
// step, no third-party code). Keys: j/k next/previous frame, n next unreviewed, h/l detection, c confirm,
// f false call, w wrong class, m draw a missed defect, C/F whole frame, / filters, e export, ? help, Esc cancel.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const csrf = ($('meta[name="csrf-token"]') || {}).content || "";
  const rowsEl = $("#rows");
  const panelEl = $("#panel");
  const filtersEl = $("#filters");
  const onReviewPage = Boolean(rowsEl && panelEl);
  const state = { frameId: null, detId: null, drawing: null, pickWrong: false, nextCursor: null, loading: false };

  // -- small helpers ----------------------------------------------------------------------------------------
  function toast(text, isError = false) {
    const el = $("#toast");
    if (!el) return;
    el.textContent = text;
    el.className = "show" + (isError ? " error" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.className = ""; }, isError ? 5000 : 1600);
  }

  async function request(url, options = {}) {
    const response = await fetch(url, { credentials: "same-origin", ...options,
      headers: { Accept: "text/html, application/json", ...(options.headers || {}) } });
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new Error("login required");
    }
    return response;
  }

  async function detail(response) {
    try { return (await response.json()).detail || response.statusText; } catch (e) { return response.statusText; }
  }

  function filterParams() {
    const params = new URLSearchParams(new FormData(filtersEl));
    for (const [key, value] of Array.from(params.entries())) if (!value) params.delete(key);
    if (params.get("kind") === "all") params.delete("kind");
    return params;
  }

  function syncLinks(params) {
    const query = params.toString();
    const exportLink = $("#export");
    if (exportLink) exportLink.href = "/export.csv" + (query ? "?" + query : "");
    const trends = $("#trends-link");
    if (trends) { const p = new URLSearchParams(params); p.delete("kind"); trends.href = "/trends?" + p; }
    for (const tab of $$(".tab[data-kind]")) {
      const p = new URLSearchParams(params);
      p.set("kind", tab.dataset.kind);
      tab.href = "/?" + p;
      tab.classList.toggle("active", (params.get("kind") || "all") === tab.dataset.kind);
    }
  }

  function updateCounts(response) {
    const header = response.headers.get("x-counts");
    if (!header) return;
    const counts = JSON.parse(header);
    for (const [kind, n] of Object.entries(counts)) {
      const badge = $("#count-" + kind);
      if (badge) { badge.textContent = n; badge.classList.toggle("zero", n === 0); }
    }
  }

  // -- the list ---------------------------------------------------------------------------------------------
  function rows() { return $$("tr.row", rowsEl); }

  function pushUrl(params) {
    const p = new URLSearchParams(params);
    if (state.frameId) p.set("frame", state.frameId);
    history.replaceState(null, "", "/?" + p);
  }

  async function reloadList() {
    const params = filterParams();
    const response = await request("/ui/rows?" + params);
    if (!response.ok) { toast(await detail(response), true); return; }
    rowsEl.innerHTML = await response.text();
    state.nextCursor = response.headers.get("x-next-cursor") || null;
    $("#more").hidden = !state.nextCursor;
    $("#empty").hidden = rows().length > 0;
    updateCounts(response);
    syncLinks(params);
    pushUrl(params);
    markSelected();
  }

  async function loadMore() {
    if (!state.nextCursor || state.loading) return;
    state.loading = true;
    try {
      const params = filterParams();
      params.set("cursor", state.nextCursor);
      const response = await request("/ui/rows?" + params);
      if (!response.ok) { toast(await detail(response), true); return; }
      rowsEl.insertAdjacentHTML("beforeend", await response.text());
      state.nextCursor = response.headers.get("x-next-cursor") || null;
      $("#more").hidden = !state.nextCursor;
    } finally { state.loading = false; }
  }

  function markSelected() {
    for (const row of rows()) row.classList.toggle("selected", row.dataset.id === String(state.frameId));
  }

  async function openFrame(id) {
    state.frameId = Number(id);
    state.detId = null;
    markSelected();
    const row = rowsEl && rowsEl.querySelector(`tr.row[data-id="${id}"]`);
    if (row) row.scrollIntoView({ block: "nearest" });
    const response = await request("/ui/frames/" + id);
    if (!response.ok) { toast(await detail(response), true); return; }
    panelEl.innerHTML = await response.text();
    setupPanel();
    pushUrl(filterParams());
  }

  function step(delta, onlyUnreviewed = false) {
    const all = rows();
    if (!all.length) return;
    let index = all.findIndex((r) => r.dataset.id === String(state.frameId));
    for (let i = 0; i < all.length; i++) {
      index = index < 0 ? (delta > 0 ? 0 : all.length - 1) : index + delta;
      if (index < 0 || index >= all.length) {
        if (delta > 0 && state.nextCursor) { loadMore().then(() => step(delta, onlyUnreviewed)); }
        return;
      }
      const review = all[index].dataset.review;
      if (!onlyUnreviewed || review === "unreviewed" || review === "partial") { openFrame(all[index].dataset.id); return; }
    }
  }

  // -- the frame panel --------------------------------------------------------------------------------------
  function frameEl() { return $("#frame", panelEl || document); }
  function detections() { return $$("#detections li.detection"); }

  function setupPanel() {
    const img = $("#frame-image");
    const svg = $("#overlay");
    if (img && svg) {
      const fit = () => {
        if (!img.naturalWidth) return;
        svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
        // as large as the pane allows (small frames scaled up, pixel-exact), the overlay follows the image box
        const wide = panelEl.clientWidth > 900;  // side by side with the detections: leave them ~680 px
        const across = wide ? panelEl.clientWidth - 700 : panelEl.clientWidth - 40;
        const room = Math.min(across, window.innerHeight * 0.62 * img.naturalWidth / img.naturalHeight);
        const width = Math.max(240, Math.min(room, img.naturalWidth * 4));
        img.style.width = width + "px";
        const left = img.closest(".frame-left");
        if (left) left.style.maxWidth = (wide ? width : panelEl.clientWidth - 40) + "px";
        img.classList.toggle("small", img.naturalWidth * 1.5 < width);
      };
      if (img.complete) fit(); else img.addEventListener("load", fit);
    }
    const open = detections().find((li) => li.classList.contains("v-unreviewed")) || detections()[0];
    if (open) selectDetection(open.dataset.detId, false);
  }

  function selectDetection(id, scroll = true) {
    state.detId = id ? Number(id) : null;
    for (const li of detections()) {
      const on = li.dataset.detId === String(id);
      li.classList.toggle("selected", on);
      if (on && scroll) li.scrollIntoView({ block: "nearest" });
    }
    for (const rect of $$("#overlay rect[data-det-id]")) rect.classList.toggle("selected", rect.dataset.detId === String(id));
  }

  function moveDetection(delta) {
    const all = detections();
    if (!all.length) return;
    let index = all.findIndex((li) => li.dataset.detId === String(state.detId));
    index = Math.min(all.length - 1, Math.max(0, index + delta));
    selectDetection(all[index].dataset.detId);
  }

  function canReview() {
    const frame = frameEl();
    return Boolean(frame) && frame.dataset.canReview === "true";
  }

  async function review(body) {
    const frame = frameEl();
    if (!frame) return;
    if (!canReview()) { toast("you cannot review this frame (viewer role, or quarantined)", true); return; }
    const response = await request(`/api/frames/${frame.dataset.frameId}/reviews`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body) });
    if (!response.ok) { toast(await detail(response), true); return; }
    const data = await response.json();
    const keepDet = state.detId;
    panelEl.innerHTML = data.panel;
    setupPanel();
    const row = rowsEl && rowsEl.querySelector(`tr.row[data-id="${frame.dataset.frameId}"]`);
    if (row) { row.outerHTML = data.row; markSelected(); }
    toast(body.action.replace("_", " ") + " saved · " + data.state.replace("_", " "));
    const stillOpen = detections().find((li) => li.classList.contains("v-unreviewed"));
    if (data.complete && onReviewPage) { step(1, true); }
    else if (stillOpen) { selectDetection(stillOpen.dataset.detId); }
    else if (keepDet) { selectDetection(keepDet, false); }
  }

  function detectionAction(action, classValue) {
    if (state.detId === null) { frameAction(action); return; }
    const body = { action, detection_id: state.detId };
    if (classValue) body.class = classValue;
    review(body);
  }

  function frameAction(action) {
    if (action === "missed") { startDrawing(); return; }
    review({ action });
  }

  async function useAsTemplate() {
    const frame = frameEl();
    if (!frame || !canReview()) { toast("you cannot change templates (viewer role)", true); return; }
    if (!window.confirm("Make this frame the new template version of its position? The daemon uses it within seconds.")) return;
    const response = await request(`/api/frames/${frame.dataset.frameId}/template`, {
      method: "POST", headers: { "X-CSRF-Token": csrf } });
    if (!response.ok) { toast(await detail(response), true); return; }
    const data = await response.json();
    toast(`template v${data.version} of ${data.camera} · ${data.position} registered`);
  }

  // wrong class: the selected detection's menu, then a digit picks the class
  function startWrongClass() {
    const li = detections().find((el) => el.dataset.detId === String(state.detId));
    if (!li) return;
    const select = $("select[data-action=wrong_class]", li);
    if (select) { state.pickWrong = true; select.focus(); toast("wrong class: press 1-9 or pick from the menu"); }
  }

  function pickWrongByDigit(digit) {
    const li = detections().find((el) => el.dataset.detId === String(state.detId));
    const select = li && $("select[data-action=wrong_class]", li);
    state.pickWrong = false;
    if (!select || digit >= select.options.length) return;
    detectionAction("wrong_class", select.options[digit].value);
  }

  // -- drawing a missed defect ------------------------------------------------------------------------------
  function imagePoint(event) {
    const img = $("#frame-image");
    const rect = img.getBoundingClientRect();
    const sx = img.naturalWidth / rect.width;
    const sy = img.naturalHeight / rect.height;
    return [Math.max(0, Math.min(img.naturalWidth, (event.clientX - rect.left) * sx)),
            Math.max(0, Math.min(img.naturalHeight, (event.clientY - rect.top) * sy))];
  }

  function startDrawing() {
    const viewer = $("#viewer");
    if (!viewer || !$("#frame-image")) { toast("no image to draw on", true); return; }
    if (!canReview()) { toast("you cannot review this frame", true); return; }
    state.drawing = { start: null, box: null };
    viewer.classList.add("drawing");
    toast("drag a box around the missed defect (Esc cancels)");
  }

  function stopDrawing() {
    state.drawing = null;
    const viewer = $("#viewer");
    if (viewer) viewer.classList.remove("drawing");
    const box = $("#draw-box");
    if (box) box.setAttribute("visibility", "hidden");
    const picker = $("#class-picker");
    if (picker) picker.hidden = true;
  }

  function drawRect(a, b) {
    const box = $("#draw-box");
    const x1 = Math.min(a[0], b[0]), y1 = Math.min(a[1], b[1]);
    const x2 = Math.max(a[0], b[0]), y2 = Math.max(a[1], b[1]);
    box.setAttribute("x", x1); box.setAttribute("y", y1);
    box.setAttribute("width", x2 - x1); box.setAttribute("height", y2 - y1);
    box.setAttribute("visibility", "visible");
    return [x1, y1, x2, y2].map((v) => Math.round(v * 10) / 10);
  }

  function chooseMissedClass(name) {
    const box = state.drawing && state.drawing.box;
    stopDrawing();
    if (box) review({ action: "missed", class: name, box });
  }

  document.addEventListener("mousedown", (event) => {
    if (!state.drawing || !event.target.closest("#viewer")) return;
    event.preventDefault();
    state.drawing.start = imagePoint(event);
  });
  document.addEventListener("mousemove", (event) => {
    if (state.drawing && state.drawing.start) drawRect(state.drawing.start, imagePoint(event));
  });
  document.addEventListener("mouseup", (event) => {
    if (!state.drawing || !state.drawing.start) return;
    const box = drawRect(state.drawing.start, imagePoint(event));
    state.drawing.start = null;
    if (box[2] - box[0] < 2 || box[3] - box[1] < 2) { toast("box too small, drag again"); return; }
    state.drawing.box = box;
    const picker = $("#class-picker");
    if (picker) picker.hidden = false;
  });

  // -- clicks -----------------------------------------------------------------------------------------------
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (target.closest("#help-open")) { $("#help").hidden = false; return; }
    if (target.closest("#help-close")) { $("#help").hidden = true; return; }
    if (!onReviewPage) return;
    const tab = target.closest(".tab[data-kind]");
    if (tab) { event.preventDefault(); filtersEl.elements.kind.value = tab.dataset.kind; reloadList(); return; }
    const row = target.closest("tr.row");
    if (row) { event.preventDefault(); openFrame(row.dataset.id); return; }
    if (target.closest("#more")) { loadMore(); return; }
    if (target.closest("#use-template")) { useAsTemplate(); return; }
    const pick = target.closest("#class-picker button");
    if (pick) { if (pick.dataset.cancel !== undefined) stopDrawing(); else chooseMissedClass(pick.dataset.class); return; }
    const button = target.closest("button[data-action]");
    if (button) {
      const li = button.closest("li.detection[data-det-id]");
      if (li) selectDetection(li.dataset.detId, false);
      if (button.dataset.action === "retract") { review({ action: "retract", target_event_id: Number(button.dataset.target) }); return; }
      if (button.dataset.scope === "frame") frameAction(button.dataset.action); else detectionAction(button.dataset.action);
      return;
    }
    const li = target.closest("li.detection[data-det-id]");
    if (li) { selectDetection(li.dataset.detId, false); return; }
    const rect = target.closest("#overlay rect[data-det-id]");
    if (rect) selectDetection(rect.dataset.detId);
  });

  document.addEventListener("change", (event) => {
    const select = event.target.closest("select[data-action=wrong_class]");
    if (select) {
      const li = select.closest("li.detection");
      state.pickWrong = false;
      if (select.value) { selectDetection(li.dataset.detId, false); detectionAction("wrong_class", select.value); }
      return;
    }
    if (onReviewPage && event.target.closest("#filters") && event.target.tagName === "SELECT") reloadList();
  });

  if (onReviewPage && filtersEl) {
    filtersEl.addEventListener("submit", (event) => { event.preventDefault(); reloadList(); });
    const list = $("#list");
    list.addEventListener("scroll", () => { if (list.scrollTop + list.clientHeight > list.scrollHeight - 200) loadMore(); });
  }

  // -- keys -------------------------------------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.closest("input, textarea") ||
      (event.target.tagName === "SELECT" && !state.pickWrong);
    if (event.key === "Escape") {
      stopDrawing(); state.pickWrong = false; $("#help").hidden = true;
      if (document.activeElement) document.activeElement.blur();
      return;
    }
    if (typing) return;
    if (event.key === "?") { $("#help").hidden = !$("#help").hidden; return; }
    if (!onReviewPage) return;
    const picker = $("#class-picker");
    if (/^[1-9]$/.test(event.key)) {
      const digit = Number(event.key);
      if (state.pickWrong) { event.preventDefault(); pickWrongByDigit(digit); return; }
      if (picker && !picker.hidden) {
        const buttons = $$("button[data-class]", picker);
        if (digit <= buttons.length) chooseMissedClass(buttons[digit - 1].dataset.class);
        return;
      }
    }
    const keys = {
      j: () => step(1), ArrowDown: () => step(1), k: () => step(-1), ArrowUp: () => step(-1),
      n: () => step(1, true), l: () => moveDetection(1), h: () => moveDetection(-1),
      c: () => detectionAction("confirm"), f: () => detectionAction("false_call"),
      C: () => frameAction("confirm"), F: () => frameAction("false_call"),
      w: () => startWrongClass(), m: () => startDrawing(),
      e: () => { const link = $("#export"); if (link) link.click(); },
      "/": () => { const first = $("select, input[type=text]", filtersEl); if (first) first.focus(); },
    };
    const action = keys[event.key];
    if (action) { event.preventDefault(); action(); }
  });

  // -- live view --------------------------------------------------------------------------------------------
  function topId() {
    return rows().reduce((best, row) => Math.max(best, Number(row.dataset.id)), 0);
  }

  async function refreshTop() {
    if (state.refreshing) { state.again = true; return; }
    state.refreshing = true;
    try {
      const params = filterParams();
      params.set("newer_than", topId());
      const response = await request("/ui/rows?" + params);
      if (!response.ok) return;
      const html = (await response.text()).trim();
      updateCounts(response);
      if (html) {
        rowsEl.insertAdjacentHTML("afterbegin", html);
        $("#empty").hidden = true;
        const indicator = $("#live");
        indicator.classList.add("flash");
        setTimeout(() => indicator.classList.remove("flash"), 600);
        for (const row of rows()) if (Number(row.dataset.id) > state.lastSeen) row.classList.add("new");
        markSelected();
      }
      state.lastSeen = topId();
    } finally {
      state.refreshing = false;
      if (state.again) { state.again = false; refreshTop(); }
    }
  }

  if (onReviewPage && window.EventSource) {
    state.lastSeen = topId();
    const indicator = $("#live");
    const source = new EventSource("/live");
    source.addEventListener("hello", () => { indicator.classList.add("on"); });
    source.addEventListener("frame", (event) => {
      const notice = JSON.parse(event.data);
      if (notice.frame_id > topId()) refreshTop();
    });
    source.addEventListener("error", () => { indicator.classList.remove("on"); });
    window.addEventListener("beforeunload", () => source.close());
  }

  // An image asked for the moment its result committed can miss its file for a few hundred ms (the daemon
  // moves and annotates after the commit): retry a few times instead of showing a broken image.
  document.addEventListener("error", (event) => {
    const img = event.target;
    if (!(img instanceof HTMLImageElement) || !img.src.includes("/img/")) return;
    const tries = Number(img.dataset.tries || 0);
    if (tries >= 4) return;
    img.dataset.tries = tries + 1;
    const base = img.src.split("?")[0];
    setTimeout(() => { img.src = `${base}?try=${tries + 1}`; }, 700 * (tries + 1));
  }, true);

  // -- start ------------------------------------------------------------------------------------------------
  if (onReviewPage) {
    state.nextCursor = rowsEl.dataset.next || null;
    const frame = frameEl();
    if (frame) { state.frameId = Number(frame.dataset.frameId); markSelected(); setupPanel(); }
    syncLinks(filterParams());
  }
})();
