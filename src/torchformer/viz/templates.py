"""The HTML shell, stylesheet and script shared by ``report.html`` and the explain page.

Everything is inlined (no CDN, no network): the pages open offline and can be
mailed. The script is vanilla JavaScript; it finds every ``.tf-attn`` element,
reads the JSON named by its ``data-src`` (a ``<script type="application/json">``
block written by :func:`json_block`) and draws:

- a token view (``.tf-tokens``): each token's background is the attention it
  receives from [CLS], for a chosen layer / head or their mean;
- a matrix view (``.tf-matrix``): one page (window) of the attention matrix for
  a chosen layer and head; hovering a token shows its attention to the others.

Cells and tokens carry their value in ``data-v`` (4 decimals), so a test can
compare what is shown with the model's weights.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["CSS", "JS", "json_block", "page"]

CSS = r"""
:root { --accent: #1f5fbf; --muted: #667; --border: #d8dce3; --bg-soft: #f5f7fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 0; background: #fff; }
header.tf-top { background: #1d2330; color: #fff; padding: 14px 28px; }
header.tf-top h1 { margin: 0; font-size: 20px; font-weight: 600; }
header.tf-top .sub { color: #b8c2d6; font-size: 13px; }
nav.tf-nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--border);
             padding: 6px 28px; z-index: 5; }
nav.tf-nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-size: 13px; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { margin: 26px 0; }
h2 { font-size: 17px; border-bottom: 2px solid var(--accent); padding-bottom: 3px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
table.tf-table { border-collapse: collapse; font-size: 13px; }
table.tf-table th, table.tf-table td { border: 1px solid var(--border); padding: 4px 8px; text-align: left;
                                       vertical-align: top; }
table.tf-table th { background: var(--bg-soft); }
table.tf-table td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: var(--bg-soft); border: 1px solid var(--border); padding: 10px; overflow: auto;
      font-size: 12px; max-height: 480px; }
img.tf-plot { max-width: 100%; border: 1px solid var(--border); margin: 4px 8px 8px 0; }
img.tf-thumb { width: 96px; height: auto; image-rendering: pixelated; border: 1px solid var(--border); }
.tf-row { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.tf-plots { display: flex; flex-wrap: wrap; align-items: flex-start; }
.tf-note { color: var(--muted); font-size: 12px; }
.tf-pred { font-size: 16px; }
.tf-pred b { color: var(--accent); }
.tf-bar { display: inline-block; height: 10px; background: var(--accent); vertical-align: middle; }
.tf-ok { color: #2b8a3e; font-weight: 600; } .tf-wrong { color: #c92a2a; font-weight: 600; }
.tf-example { border: 1px solid var(--border); border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.tf-controls { margin: 6px 0; font-size: 13px; }
.tf-controls label { margin-right: 10px; }
.tf-controls select, .tf-controls button { font-size: 13px; margin-left: 3px; }
.tf-tokens { line-height: 2.0; border: 1px solid var(--border); padding: 6px 8px; max-height: 320px;
             overflow: auto; }
.tf-tok { padding: 2px 1px; border-radius: 3px; cursor: default; }
.tf-tok.special { color: var(--muted); font-size: 11px; }
.tf-strip { line-height: 2.0; margin: 6px 0; }
.tf-strip .tf-tok { border: 1px solid transparent; }
.tf-strip .tf-tok.active { border-color: #c92a2a; }
.tf-matrix-wrap { overflow: auto; max-height: 760px; border: 1px solid var(--border); display: inline-block;
                  max-width: 100%; }
table.tf-matrix { border-collapse: collapse; font-size: 10px; }
table.tf-matrix td.c { width: 13px; height: 13px; min-width: 13px; padding: 0; border: 1px solid #fff; }
table.tf-matrix th { font-weight: normal; white-space: nowrap; padding: 0 3px; color: #333; }
table.tf-matrix th.q { text-align: right; }
table.tf-matrix th.k { writing-mode: vertical-rl; transform: rotate(180deg); height: 70px; text-align: left; }
table.tf-matrix tr.active th.q { background: #ffe3e3; }
table.tf-matrix tr.active td.c { border-color: #c92a2a; }
details > summary { cursor: pointer; color: var(--accent); }
"""

JS = r"""
(function () {
  "use strict";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function shade(v, max) {
    var a = max > 0 ? Math.min(1, v / max) : 0;
    return "rgba(31, 95, 191, " + (0.04 + 0.8 * a).toFixed(3) + ")";
  }
  function paint(node, v, max) {  // background by value; light text on dark cells
    node.style.background = shade(v, max);
    node.style.color = max > 0 && v / max > 0.6 ? "#fff" : "";
  }
  function fmt(v) { return v.toFixed(4); }
  function meanOf(rows) {  // element-wise mean of equal-length arrays
    var out = rows[0].slice();
    for (var r = 1; r < rows.length; r++) {
      for (var i = 0; i < out.length; i++) { out[i] += rows[r][i]; }
    }
    for (var j = 0; j < out.length; j++) { out[j] /= rows.length; }
    return out;
  }
  function select(label, options, value, onChange) {
    var wrap = el("label", null, label + " ");
    var s = el("select");
    options.forEach(function (o) {
      var opt = el("option", null, o[1]);
      opt.value = String(o[0]);
      s.appendChild(opt);
    });
    s.value = String(value);
    s.addEventListener("change", function () { onChange(s.value); });
    wrap.appendChild(s);
    return wrap;
  }
  function pick(v) { return v === "mean" ? "mean" : parseInt(v, 10); }
  function label(tok) { return tok.indexOf("##") === 0 ? tok.slice(2) : tok; }

  // ---- token view: attention received from position 0 ([CLS]) -------------------
  function clsValues(data, layer, head) {
    var perLayer = [];
    var layers = layer === "mean" ? data.cls.map(function (_, i) { return i; }) : [layer];
    layers.forEach(function (l) {
      var heads = data.cls[l];
      perLayer.push(head === "mean" ? meanOf(heads) : heads[head]);
    });
    return meanOf(perLayer);
  }
  function drawTokens(box, tokens, special, values) {
    box.textContent = "";
    var max = 0;
    values.forEach(function (v, i) { if (!special[i] && v > max) { max = v; } });
    if (max === 0) { max = Math.max.apply(null, values); }
    tokens.forEach(function (tok, i) {
      if (i > 0 && tok.indexOf("##") !== 0) { box.appendChild(document.createTextNode(" ")); }
      var s = el("span", "tf-tok" + (special[i] ? " special" : ""), label(tok));
      s.dataset.i = String(i);
      s.dataset.v = fmt(values[i]);
      s.title = tok + ": " + fmt(values[i]);
      paint(s, values[i], max);
      box.appendChild(s);
    });
  }
  function tokenView(root, data) {
    var state = { layer: data.n_layers - 1, head: "mean" };
    var layerOpts = [];
    for (var l = 0; l < data.n_layers; l++) { layerOpts.push([l, "layer " + l]); }
    layerOpts.push(["mean", "mean of layers"]);
    var headOpts = [["mean", "mean of heads"]];
    for (var h = 0; h < data.n_heads; h++) { headOpts.push([h, "head " + h]); }
    var controls = el("div", "tf-controls");
    var box = el("div", "tf-tokens");
    function redraw() {
      box.dataset.layer = String(state.layer);
      box.dataset.head = String(state.head);
      drawTokens(box, data.tokens, data.special, clsValues(data, state.layer, state.head));
    }
    controls.appendChild(select("layer", layerOpts, state.layer, function (v) { state.layer = pick(v); redraw(); }));
    controls.appendChild(select("head", headOpts, state.head, function (v) { state.head = pick(v); redraw(); }));
    root.appendChild(controls);
    root.appendChild(box);
    redraw();
  }

  // ---- matrix view: one page of one layer/head, hover a token for its row -------
  function pageMatrix(page, layerPos, head) {
    var heads = page.attn[layerPos];
    if (head !== "mean") { return heads[head]; }
    return heads[0].map(function (_, q) { return meanOf(heads.map(function (m) { return m[q]; })); });
  }
  function matrixView(root, data) {
    var cross = data.kind === "cross";
    var state = { layerPos: data.layers.length - 1, head: cross ? "mean" : 0, page: 0 };
    var controls = el("div", "tf-controls");
    var layerOpts = data.layers.map(function (l, i) { return [i, "layer " + l]; });
    var headOpts = [["mean", "mean of heads"]];
    for (var h = 0; h < data.n_heads; h++) { headOpts.push([h, "head " + h]); }
    controls.appendChild(select("layer", layerOpts, state.layerPos, function (v) { state.layerPos = pick(v); redraw(); }));
    controls.appendChild(select("head", headOpts, state.head, function (v) { state.head = pick(v); redraw(); }));
    var pageOpts = data.pages.map(function (p, i) {
      return [i, (cross ? "output tokens " : "tokens ") + p.start + "–" + (p.end - 1)];
    });
    var pageSel = select("window", pageOpts, 0, function (v) { state.page = pick(v); redraw(); });
    var prev = el("button", "tf-prev", "◀"), next = el("button", "tf-next", "▶");
    function go(delta) {
      var p = state.page + delta;
      if (p < 0 || p >= data.pages.length) { return; }
      state.page = p;
      pageSel.querySelector("select").value = String(p);
      redraw();
    }
    prev.addEventListener("click", function () { go(-1); });
    next.addEventListener("click", function () { go(1); });
    if (data.pages.length > 1) {
      controls.appendChild(prev);
      controls.appendChild(pageSel);
      controls.appendChild(next);
    }
    root.appendChild(controls);
    if (data.note) { root.appendChild(el("div", "tf-note", data.note)); }
    var queryStrip = el("div", "tf-strip tf-queries"), keyStrip = el("div", "tf-strip tf-keys");
    var hint = el("div", "tf-note", cross ? "Hover an output token to see its attention over the source."
                                          : "Hover a token to see where it attends.");
    root.appendChild(hint);
    root.appendChild(queryStrip);
    if (cross) { root.appendChild(keyStrip); }
    var wrap = el("div", "tf-matrix-wrap");
    root.appendChild(wrap);

    function keyTokens(page) {
      return cross ? data.source_tokens : data.tokens.slice(page.start, page.end);
    }
    function queryTokens(page) {
      return (cross ? data.target_tokens : data.tokens).slice(page.start, page.end);
    }
    function showRow(m, q, rows, keysBox) {
      var keys = keysBox.querySelectorAll(".tf-tok");
      var max = Math.max.apply(null, m[q]);
      keys.forEach(function (k, j) {
        paint(k, m[q][j], max);
        k.dataset.v = fmt(m[q][j]);
        k.title = k.textContent + ": " + fmt(m[q][j]);
      });
      rows.forEach(function (r, i) { r.classList.toggle("active", i === q); });
      (cross ? queryStrip : keysBox).querySelectorAll(".tf-tok").forEach(function (t, i) {
        t.classList.toggle("active", i === q);
      });
    }
    function clearRow(rows, keysBox) {
      keysBox.querySelectorAll(".tf-tok").forEach(function (k) {
        k.style.background = ""; k.style.color = ""; delete k.dataset.v; k.title = k.textContent;
      });
      queryStrip.querySelectorAll(".tf-tok").forEach(function (t) { t.classList.remove("active"); });
      rows.forEach(function (r) { r.classList.remove("active"); });
    }
    function strip(box, tokens) {
      box.textContent = "";
      tokens.forEach(function (tok, i) {
        if (i > 0) { box.appendChild(document.createTextNode(" ")); }
        var s = el("span", "tf-tok", label(tok));
        s.dataset.i = String(i);
        s.title = tok;
        box.appendChild(s);
      });
    }
    function redraw() {
      var page = data.pages[state.page];
      var m = pageMatrix(page, state.layerPos, state.head);
      var keys = keyTokens(page), queries = queryTokens(page);
      root.dataset.layer = String(data.layers[state.layerPos]);
      root.dataset.head = String(state.head);
      root.dataset.page = String(state.page);
      strip(queryStrip, queries);
      if (cross) { strip(keyStrip, keys); }
      var keysBox = cross ? keyStrip : queryStrip;
      var max = 0;
      m.forEach(function (row) { row.forEach(function (v) { if (v > max) { max = v; } }); });
      var table = el("table", "tf-matrix"), head = el("tr");
      head.appendChild(el("th"));
      keys.forEach(function (k) { head.appendChild(el("th", "k", label(k))); });
      table.appendChild(head);
      var rows = [];
      m.forEach(function (row, q) {
        var tr = el("tr");
        tr.appendChild(el("th", "q", label(queries[q])));
        row.forEach(function (v, k) {
          var td = el("td", "c");
          td.dataset.q = String(page.start + q);
          td.dataset.k = String(cross ? k : page.start + k);
          td.dataset.v = fmt(v);
          td.title = queries[q] + " → " + keys[k] + ": " + fmt(v);
          td.style.background = shade(v, max);
          tr.appendChild(td);
        });
        tr.addEventListener("mouseenter", function () { showRow(m, q, rows, keysBox); });
        rows.push(tr);
        table.appendChild(tr);
      });
      table.addEventListener("mouseleave", function () { clearRow(rows, keysBox); });
      wrap.textContent = "";
      wrap.appendChild(table);
      queryStrip.querySelectorAll(".tf-tok").forEach(function (t, q) {
        t.addEventListener("mouseenter", function () { showRow(m, q, rows, keysBox); });
        t.addEventListener("mouseleave", function () { clearRow(rows, keysBox); });
      });
    }
    redraw();
  }

  function init() {
    document.querySelectorAll(".tf-attn").forEach(function (root) {
      var data = JSON.parse(document.getElementById(root.dataset.src).textContent);
      if (root.classList.contains("tf-token-view")) { tokenView(root, data); }
      else { matrixView(root, data); }
      root.dataset.ready = "1";
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); }
  else { init(); }
})();
"""


def json_block(element_id: str, data: Any) -> str:
    """``<script type="application/json">`` holding ``data``; ``<`` escaped so no tag can close it."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{html.escape(element_id)}">{text}</script>'


def page(
    title: str, body: str, *, subtitle: str = "", nav: list[tuple[str, str]] | None = None
) -> str:
    """A complete, self-contained HTML document."""
    links = "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in nav or [])
    nav_html = f'<nav class="tf-nav">{links}</nav>' if links else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="tf-top"><h1>{html.escape(title)}</h1>'
        f'<div class="sub">{html.escape(subtitle)}</div></header>{nav_html}'
        f"<main>{body}</main><script>{JS}</script></body></html>\n"
    )
