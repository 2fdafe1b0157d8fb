"""What `index.html` carries inline: its style and its one script (the filter's, the review's,
the ratings' and the lightbox's, in that order), each allowed by its hash (`outputs.gallery`).

The scripts ask nothing of the network and never write markup: they set attributes, classes
and text, and make elements with `createElement`. The only URLs they make are the downloads'
(a `blob:` of the file they built) and the lightbox's image (the `href` of the card's own
link, a relative path nbp wrote). No line comments and no "//" anywhere: the page is checked
to hold no URL of any kind.
"""

from __future__ import annotations

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.25rem;color:#222;background:#f6f6f4}
h1{margin:0 0 .25rem;font-size:1.4rem}h2{font-size:1.1rem;margin:1.75rem 0 .25rem}
.summary{font-weight:600;margin:.25rem 0}.meta{color:#666;margin:0 0 1rem}
.emulated{background:#fff3cd;border:1px solid #e0c060;border-radius:3px;padding:.4rem .6rem;
margin:.25rem 0;max-width:60rem}
dl.vars{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.25rem 0 .75rem}
dl.vars dt{font-weight:600}dl.vars dt::after{content:":"}dl.vars dd{margin:0}
.scroll{overflow-x:auto}
table.grid{border-collapse:collapse;background:#fff}
table.grid th,table.grid td{border:1px solid #ddd;padding:.35rem;vertical-align:top}
table.grid thead th{background:#ecebe7;white-space:nowrap;font-size:13px}
th.prompt{width:12rem;min-width:9rem;font-weight:400;text-align:left;font-size:12px;
background:#fff;position:sticky;left:0;z-index:1}
th.prompt div{overflow:hidden;display:-webkit-box;-webkit-line-clamp:10;
-webkit-box-orient:vertical}
.card{display:inline-block;margin:0;width:180px;vertical-align:top}
.card+.card{margin-left:.35rem}
.card .frame{height:180px;display:flex;align-items:center;justify-content:center;
background:#f1f0ec;border-radius:3px;overflow:hidden}
.card img{display:block;max-width:180px;max-height:180px}
.card figcaption{display:flex;justify-content:space-between;gap:.25rem;font-size:11px;
color:#555;margin-top:.2rem;white-space:nowrap}
.card figcaption code{font-size:10.5px;overflow:hidden;text-overflow:ellipsis}
.card .reason{box-sizing:border-box;height:180px;overflow:auto;padding:.5rem;
border-radius:3px;font-size:12px;overflow-wrap:anywhere}
.card .reason strong{display:block;text-transform:uppercase;margin-bottom:.25rem}
.failed .reason{background:#fde8e8;color:#8a1c1c;border:1px solid #f5b5b5}
.cancelled .reason,.skipped .reason,.unknown .reason{background:#eee;color:#444;
border:1px solid #ccc}
.noimage{color:#666}
[hidden]{display:none!important}
form.filter{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem 1rem;margin:0 0 1rem;
font-size:13px}
form.filter select{max-width:16rem}form.filter output{color:#666}
table.grid caption{caption-side:top;text-align:left;color:#666;padding:0 0 .35rem}
.card.paired{width:366px}.pair{display:flex;gap:6px}.pair .side{width:180px}
.pair .tag{display:block;font-size:11px;color:#555;margin-bottom:.15rem}
.superseded .frame{opacity:.8}.card p.superseded{font-size:11px;color:#666;margin:.15rem 0 0}
.card .review{display:flex;flex-wrap:wrap;align-items:center;gap:.3rem;margin-top:.2rem;
font-size:11px}
.badge{border-radius:3px;padding:0 .35rem;font-weight:600;border:1px solid #ccc}
.badge.approved{background:#e3f4e1;color:#1d5e1a;border-color:#9fd39a}
.badge.rejected{background:#fde8e8;color:#8a1c1c;border-color:#f5b5b5}
.decide button{font-size:11px;padding:0 .4rem;margin-right:.2rem;cursor:pointer}
.decide button[aria-pressed=true]{font-weight:700}
.chosen-approved .frame{outline:3px solid #3c9a36}
.chosen-rejected .frame{outline:3px solid #c43c3c}
.chosen-approved .decide button[value=approved]{background:#3c9a36;color:#fff}
.chosen-rejected .decide button[value=rejected]{background:#c43c3c;color:#fff}
.review-bar{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem 1rem;margin:0 0 1rem;
font-size:13px}#review-count,.review-bar .hint{color:#666}
.card .differs{font-size:11px;color:#333;margin-top:.1rem;overflow-wrap:anywhere}
.card .rate{display:flex;flex-wrap:wrap;align-items:center;gap:.2rem;margin-top:.2rem;
font-size:11px}
.rate button{font-size:11px;padding:0 .35rem;cursor:pointer}
.rate .stars button{border:0;background:none;padding:0 .05rem;color:#b5b5b5;font-size:15px;
line-height:1}
.rate .stars button.lit{color:#c98a00}
.rated-pass .rate button[value=pass]{background:#3c9a36;color:#fff}
.rated-fail .rate button[value=fail]{background:#c43c3c;color:#fff}
html.lb-open{overflow:hidden}
.lightbox{position:fixed;inset:0;z-index:10;display:flex;gap:1rem;padding:1rem;
box-sizing:border-box;background:rgba(18,18,18,.94);color:#eee}
.lb-frame{flex:1;min-width:0;display:flex;align-items:center;justify-content:center}
.lb-frame img{max-width:100%;max-height:calc(100vh - 2rem);object-fit:contain;background:#333}
.lb-side{flex:none;width:20rem;overflow:auto;font-size:13px}
.lb-head{font-weight:600;margin:0 0 .3rem;overflow-wrap:anywhere}
.lb-judged{margin:0 0 .5rem;color:#f3d27a}
.lb-side dl{display:grid;grid-template-columns:auto 1fr;gap:.15rem .6rem;margin:0 0 .6rem}
.lb-side dt{font-weight:600;color:#bbb}.lb-side dd{margin:0;overflow-wrap:anywhere}
.lb-prompt{white-space:pre-wrap;color:#ddd;margin:0 0 .6rem}
.lb-keys{color:#999;font-size:12px}
.lb-buttons{display:flex;flex-wrap:wrap;gap:.4rem}.lb-buttons button{cursor:pointer}
@media (max-width:760px){.lightbox{flex-direction:column}.lb-side{width:auto;max-height:40vh}}
"""

# The filter (see the module docstring). Cards carry `data-f`: for each select, in order, the
# index of the card's value among that select's options (after "all"). It never writes
# markup, only `hidden` and the count: values from user data are read as option values.
# No line comments: the page is checked to hold no "//" (no URL of any kind).
FILTER_SCRIPT = """
(function () {
  "use strict";
  var form = document.getElementById("filter");
  if (!form) { return; }
  var selects = Array.prototype.slice.call(form.querySelectorAll("select"));
  var failedOnly = form.querySelector("input[type=checkbox]");
  var cards = Array.prototype.slice.call(document.querySelectorAll("figure.card"));
  var codes = cards.map(function (card) { return (card.getAttribute("data-f") || "").split(" "); });

  function fromFragment() {
    var params = new URLSearchParams(location.hash.slice(1));
    selects.forEach(function (select) {
      var wanted = params.get(select.name), index = 0;
      for (var i = 1; wanted !== null && i < select.options.length; i++) {
        if (select.options[i].value === wanted) { index = i; }
      }
      select.selectedIndex = index;
    });
    failedOnly.checked = params.has(failedOnly.name);
  }

  function toFragment() {
    var params = new URLSearchParams();
    selects.forEach(function (select) {
      if (select.selectedIndex > 0) { params.append(select.name, select.value); }
    });
    if (failedOnly.checked) { params.append(failedOnly.name, ""); }
    var fragment = params.toString();
    try {
      var url = fragment ? "#" + fragment : location.pathname + location.search;
      history.replaceState(null, "", url);
    } catch (error) { /* some browsers refuse it for a page opened from disk: no matter */ }
  }

  function hideEmpty(table, active) {
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var headers = table.tHead.rows[0].cells;
    var used = [], any = false;
    rows.forEach(function (row) {
      var shown = false;
      for (var j = 1; j < row.cells.length; j++) {
        if (row.cells[j].querySelector("figure.card:not([hidden])")) {
          used[j] = shown = any = true;
        }
      }
      row.hidden = active && !shown;
    });
    for (var j = 1; j < headers.length; j++) {
      var hide = active && !used[j];
      headers[j].hidden = hide;
      rows.forEach(function (row) { if (row.cells[j]) { row.cells[j].hidden = hide; } });
    }
    table.closest("section").hidden = active && !any;
  }

  function apply() {
    var wanted = selects.map(function (select) { return String(select.selectedIndex - 1); });
    var active = failedOnly.checked || selects.some(function (s) { return s.selectedIndex > 0; });
    var count = 0;
    cards.forEach(function (card, i) {
      var show = !(failedOnly.checked && card.classList.contains("succeeded")) &&
        wanted.every(function (want, axis) { return want === "-1" || codes[i][axis] === want; });
      card.hidden = !show;
      count += show ? 1 : 0;
    });
    Array.prototype.forEach.call(document.querySelectorAll("table.grid"), function (table) {
      hideEmpty(table, active);
    });
    document.getElementById("shown").textContent = count + " of " + cards.length + " cards";
  }

  form.addEventListener("change", function () { toFragment(); apply(); });
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  window.addEventListener("hashchange", function () { fromFragment(); apply(); });
  form.hidden = false;
  fromFragment();
  apply();
})();
"""


# Review (see the module docstring). Choices live in `chosen` (cell id -> decision and time),
# in localStorage under the page's path; only cells with buttons on this page are kept. It
# never writes markup, only attributes, classes and text; the one URL it makes is the
# download's, a blob: of the decisions it built. The file is outputs.review.EXPORT_FORMAT.
REVIEW_SCRIPT = """
(function () {
  "use strict";
  var bar = document.getElementById("review");
  if (!bar) { return; }
  var key = "nbp-review " + location.pathname;
  var download = document.getElementById("review-download");
  var clear = document.getElementById("review-clear");
  var count = document.getElementById("review-count");
  var controls = Array.prototype.slice.call(document.querySelectorAll("figure.card .decide"));
  var onPage = {};
  controls.forEach(function (control) { onPage[cellOf(control)] = true; });
  var chosen = load();

  function cellOf(element) { return element.closest("figure.card").id.slice(5); }

  function load() {
    var found = {};
    try {
      var stored = JSON.parse(localStorage.getItem(key) || "{}");
      Object.keys(stored).forEach(function (id) {
        var choice = stored[id];
        if (onPage[id] === true && choice && typeof choice.at === "string" &&
            (choice.decision === "approved" || choice.decision === "rejected")) {
          found[id] = {decision: choice.decision, at: choice.at};
        }
      });
    } catch (error) { /* no storage here: choices last as long as the page */ }
    return found;
  }

  function save() {
    try { localStorage.setItem(key, JSON.stringify(chosen)); } catch (error) { /* see load */ }
  }

  function show() {
    controls.forEach(function (control) {
      var choice = chosen[cellOf(control)], card = control.closest("figure.card");
      Array.prototype.forEach.call(control.querySelectorAll("button"), function (button) {
        button.setAttribute("aria-pressed", String(!!choice && choice.decision === button.value));
      });
      card.classList.toggle("chosen-approved", !!choice && choice.decision === "approved");
      card.classList.toggle("chosen-rejected", !!choice && choice.decision === "rejected");
    });
    var ids = Object.keys(chosen), approved = 0;
    ids.forEach(function (id) { approved += chosen[id].decision === "approved" ? 1 : 0; });
    count.textContent = ids.length ? ids.length + " chosen: " + approved + " approved, " +
      (ids.length - approved) + " rejected" : "no choice yet";
    download.disabled = clear.disabled = !ids.length;
  }

  function decisionsFile() {
    var decisions = Object.keys(chosen).sort().map(function (id) {
      return {cell_id: id, decision: chosen[id].decision, at: chosen[id].at};
    });
    var title = document.title.replace(/[\\u0000-\\u001f\\u007f-\\u009f]/g, "").slice(0, 200);
    return JSON.stringify({format: "nbp-review-decisions", version: 1,
      exported_at: new Date().toISOString(), title: title, decisions: decisions}, null, 1);
  }

  function saveFile() {
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([decisionsFile()], {type: "application/json"}));
    link.download = "review-decisions.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".decide button");
    if (!button) { return; }
    var id = cellOf(button), was = chosen[id];
    if (was && was.decision === button.value) {
      delete chosen[id];
    } else {
      chosen[id] = {decision: button.value, at: new Date().toISOString()};
    }
    save();
    show();
  });
  download.addEventListener("click", saveFile);
  clear.addEventListener("click", function () { chosen = {}; save(); show(); });
  controls.forEach(function (control) { control.hidden = false; });
  bar.hidden = false;
  show();
})();
"""


# Ratings (see outputs.gallery). Each card with an image the store can take gets pass / fail
# and 1-5 stars (pressed again, withdrawn). They live in localStorage under the target's
# folder (the bar's `data-target`: the path from the page to the target), so every page of
# one target (index.html, a redraw with another pivot) shares them, and a reload keeps them.
# Ratings of cells not on this page are kept as they are and never exported. The file it
# saves is outputs.review.RATINGS_FORMAT, with no preferences (the compare page has those).
RATING_SCRIPT = """
(function () {
  "use strict";
  var bar = document.getElementById("ratings");
  if (!bar) { return; }
  var folder = new URL(bar.getAttribute("data-target") || "./", location.href);
  var key = "nbp-ratings " + folder.pathname;
  var download = document.getElementById("ratings-download");
  var clear = document.getElementById("ratings-clear");
  var count = document.getElementById("ratings-count");
  var controls = Array.prototype.slice.call(document.querySelectorAll("figure.card .rate"));
  var onPage = {};
  controls.forEach(function (control) {
    onPage[cellOf(control)] = true;
    control.appendChild(button("pass", "pass", "pass"));
    control.appendChild(button("fail", "fail", "fail"));
    var stars = control.appendChild(document.createElement("span"));
    stars.className = "stars";
    [1, 2, 3, 4, 5].forEach(function (n) {
      stars.appendChild(button(String(n), "\u2605", n + " of 5 stars"));
    });
  });
  var rated = {};

  function button(value, text, label) {
    var made = document.createElement("button");
    made.type = "button";
    made.value = value;
    made.textContent = text;
    made.setAttribute("aria-label", label);
    made.setAttribute("aria-pressed", "false");
    return made;
  }

  function cellOf(element) { return element.closest("figure.card").id.slice(5); }

  function fits(r) {
    var pass = r.pass === true || r.pass === false;
    var stars = [1, 2, 3, 4, 5].indexOf(r.stars) >= 0;
    return typeof r.at === "string" && (pass || r.pass === undefined) &&
      (stars || r.stars === undefined) && (pass || stars);
  }

  function stored() {
    try {
      var found = JSON.parse(localStorage.getItem(key) || "{}");
      return found && typeof found === "object" && !Array.isArray(found) ? found : {};
    } catch (error) { return {}; }
  }

  function load() {
    var all = stored();
    rated = {};
    Object.keys(all).forEach(function (id) {
      var r = all[id];
      if (onPage[id] === true && r && typeof r === "object" && fits(r)) {
        rated[id] = {pass: r.pass, stars: r.stars, at: r.at};
      }
    });
  }

  function save() {
    var all = stored();
    Object.keys(onPage).forEach(function (id) {
      if (rated[id]) { all[id] = rated[id]; } else { delete all[id]; }
    });
    try { localStorage.setItem(key, JSON.stringify(all)); } catch (error) { /* no storage */ }
  }

  function words(r) {
    var out = [];
    if (r.pass !== undefined) { out.push(r.pass ? "pass" : "fail"); }
    if (r.stars !== undefined) { out.push(r.stars + " of 5 stars"); }
    return out.join(" · ");
  }

  function show() {
    var passed = 0, failed = 0, starred = 0, ids = Object.keys(rated);
    controls.forEach(function (control) {
      var r = rated[cellOf(control)] || {}, card = control.closest("figure.card");
      Array.prototype.forEach.call(control.querySelectorAll("button"), function (button) {
        var value = button.value, stars = Number(value);
        var on = value === "pass" ? r.pass === true : value === "fail" ? r.pass === false :
          r.stars === stars;
        button.setAttribute("aria-pressed", String(on));
        button.classList.toggle("lit", !!stars && r.stars !== undefined && stars <= r.stars);
      });
      card.classList.toggle("rated-pass", r.pass === true);
      card.classList.toggle("rated-fail", r.pass === false);
      card.setAttribute("data-rating", words(r));
    });
    ids.forEach(function (id) {
      passed += rated[id].pass === true ? 1 : 0;
      failed += rated[id].pass === false ? 1 : 0;
      starred += rated[id].stars !== undefined ? 1 : 0;
    });
    count.textContent = ids.length ? ids.length + " rated: " + passed + " pass, " + failed +
      " fail, " + starred + " with stars" : "no rating yet";
    download.disabled = clear.disabled = !ids.length;
  }

  function ratingsFile() {
    var ratings = Object.keys(rated).sort().map(function (id) {
      var r = rated[id], entry = {cell_id: id};
      if (r.pass !== undefined) { entry.pass = r.pass; }
      if (r.stars !== undefined) { entry.stars = r.stars; }
      entry.at = r.at;
      return entry;
    });
    var title = document.title.replace(/[\\u0000-\\u001f\\u007f-\\u009f]/g, "").slice(0, 200);
    return JSON.stringify({format: "nbp-ratings", version: 1,
      exported_at: new Date().toISOString(), title: title, ratings: ratings,
      preferences: []}, null, 1);
  }

  function saveFile() {
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([ratingsFile()], {type: "application/json"}));
    link.download = "ratings.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".rate button");
    if (!button) { return; }
    var id = cellOf(button), was = rated[id] || {}, now = {pass: was.pass, stars: was.stars};
    if (button.value === "pass" || button.value === "fail") {
      var pass = button.value === "pass";
      now.pass = was.pass === pass ? undefined : pass;
    } else {
      var stars = Number(button.value);
      now.stars = was.stars === stars ? undefined : stars;
    }
    if (now.pass === undefined && now.stars === undefined) {
      delete rated[id];
    } else {
      now.at = new Date().toISOString();
      rated[id] = now;
    }
    save();
    show();
  });
  window.addEventListener("storage", function (event) {
    if (event.key === key) { load(); show(); }
  });
  download.addEventListener("click", saveFile);
  clear.addEventListener("click", function () { rated = {}; save(); show(); });
  controls.forEach(function (control) { control.hidden = false; });
  bar.hidden = false;
  load();
  show();
})();
"""


# The lightbox (see outputs.gallery). A plain click on a card's image opens it large over the
# page with the card's facts (`data-axes`), its prompt (the image's alt text), its decision and
# rating; the arrow keys (and buttons) move through the images the filter shows, in page
# order; Escape, the close button or a click beside the image closes it. Keys p / f, 1-5, a / r
# press the card's own pass / fail, star, approve / reject buttons. A click with a modifier
# key, or without scripts, follows the link to the image as before.
LIGHTBOX_SCRIPT = """
(function () {
  "use strict";
  var box = document.getElementById("lightbox");
  if (!box) { return; }
  var frame = box.querySelector(".lb-frame");
  var head = box.querySelector(".lb-head"), judged = box.querySelector(".lb-judged");
  var facts = box.querySelector(".lb-facts"), prompt = box.querySelector(".lb-prompt");
  var previous = box.querySelector(".lb-prev"), next = box.querySelector(".lb-next");
  var close = box.querySelector(".lb-close");
  var image = document.createElement("img");
  image.alt = "";
  frame.appendChild(image);
  var links = [], at = -1, opener = null;
  var keys = {p: ".rate button[value=pass]", f: ".rate button[value=fail]",
    a: ".decide button[value=approved]", r: ".decide button[value=rejected]"};
  [1, 2, 3, 4, 5].forEach(function (n) { keys[n] = ".rate button[value='" + n + "']"; });

  function shown() {
    return Array.prototype.slice.call(document.querySelectorAll("figure.card a.image"))
      .filter(function (link) { return !link.closest("[hidden]"); });
  }

  function verdict(card) {
    if (card.classList.contains("chosen-approved")) { return "approved (chosen here)"; }
    if (card.classList.contains("chosen-rejected")) { return "rejected (chosen here)"; }
    var badge = card.querySelector(".badge");
    return badge ? badge.textContent : "";
  }

  function draw() {
    var link = links[at], card = link.closest("figure.card"), thumb = link.querySelector("img");
    image.setAttribute("src", link.getAttribute("href"));
    image.alt = thumb ? thumb.alt : "";
    head.textContent = "cell " + card.id.slice(5) + " (" + (at + 1) + " of " + links.length + ")";
    judged.textContent = [verdict(card), card.getAttribute("data-rating") || ""]
      .filter(Boolean).join(" · ");
    while (facts.firstChild) { facts.removeChild(facts.firstChild); }
    var pairs = [];
    try {
      pairs = JSON.parse(card.getAttribute("data-axes") || "[]");
    } catch (error) { pairs = []; }
    pairs.forEach(function (pair) {
      var term = document.createElement("dt"), value = document.createElement("dd");
      term.textContent = String(pair[0]);
      value.textContent = String(pair[1]);
      facts.appendChild(term);
      facts.appendChild(value);
    });
    prompt.textContent = image.alt;
    previous.disabled = at <= 0;
    next.disabled = at >= links.length - 1;
  }

  function open(link) {
    links = shown();
    at = links.indexOf(link);
    if (at < 0) { return; }
    opener = link;
    box.hidden = false;
    document.documentElement.classList.add("lb-open");
    draw();
    close.focus();
  }

  function hide() {
    box.hidden = true;
    document.documentElement.classList.remove("lb-open");
    image.removeAttribute("src");
    if (opener) { opener.focus(); }
  }

  function move(step) {
    if (at + step >= 0 && at + step < links.length) { at += step; draw(); }
  }

  function press(selector) {
    var button = links[at].closest("figure.card").querySelector(selector);
    if (button && !button.closest("[hidden]")) { button.click(); draw(); }
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("figure.card a.image");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey ||
        event.altKey) { return; }
    event.preventDefault();
    open(link);
  });
  document.addEventListener("keydown", function (event) {
    if (box.hidden || event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Escape") { hide(); }
    else if (event.key === "ArrowRight") { move(1); }
    else if (event.key === "ArrowLeft") { move(-1); }
    else if (keys.hasOwnProperty(event.key)) { press(keys[event.key]); }
    else { return; }
    event.preventDefault();
  });
  box.addEventListener("click", function (event) {
    if (event.target === box || event.target === frame) { hide(); }
  });
  previous.addEventListener("click", function () { move(-1); });
  next.addEventListener("click", function () { move(1); });
  close.addEventListener("click", hide);
})();
"""
# The page's one inline script, allowed by its hash.
PAGE_SCRIPT = FILTER_SCRIPT + REVIEW_SCRIPT + RATING_SCRIPT + LIGHTBOX_SCRIPT
