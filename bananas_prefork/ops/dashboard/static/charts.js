// The history charts of the overview: the series the masters keep in Redis
// (/api/history), drawn with uPlot (vendor/, MIT licence). The per-second view
// updates every 2 s, the per-minute one every 30 s. Each chart's element
// carries data-points (buckets with figures) and data-sum (of its first series),
// for tests and a glance.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || !window.uPlot) {
    return;
  }
  var base = document.body.getAttribute("data-base") || "";
  var resolution = root.getAttribute("data-resolution") || "second";
  var timer = null;
  var charts = {};
  var CHARTS = [
    {id: "throughput", series: [["done", "done", "#2e7d32"], ["failed", "failed", "#c62828"]]},
    {id: "latency", series: [["latency_ms", "latency ms", "#1565c0"]]},
    {id: "depth", samples: true,
     series: [["depth.high", "high", "#6a1b9a"], ["depth.normal", "normal", "#ef6c00"],
              ["depth.low", "low", "#546e7a"]]}
  ];

  function column(data, path) {
    return path.split(".").reduce(function (value, key) { return value[key]; }, data);
  }

  function width(element) {
    return Math.max(280, element.clientWidth - 8);
  }

  // The window starts at the first bucket anyone reported in (at least MIN_SHOWN
  // buckets back): a cluster up for a minute fills its chart, not a tenth of it.
  var MIN_SHOWN = 60;

  function firstReported(data) {
    var first = data.t.length;
    for (var i = 0; i < data.t.length; i++) {
      if (data.done[i] !== null) { first = i; break; }
    }
    return Math.max(0, Math.min(first, data.t.length - MIN_SHOWN));
  }

  function draw(spec, data) {
    var element = document.getElementById("chart-" + spec.id);
    var start = firstReported(data);
    var columns = [data.t].concat(spec.series.map(function (s) { return column(data, s[0]); }))
      .map(function (values) { return values.slice(start); });
    var shown = columns[1].filter(function (v) { return v !== null; });
    element.setAttribute("data-points", String(shown.length));
    element.setAttribute("data-sum", String(shown.reduce(function (a, b) { return a + b; }, 0)));
    var key = spec.id + ":" + data.resolution;
    if (charts[spec.id] && charts[spec.id].key === key) {
      charts[spec.id].plot.setData(columns);
      return;
    }
    if (charts[spec.id]) {
      charts[spec.id].plot.destroy();
    }
    var options = {
      width: width(element), height: 180,
      scales: {x: {time: true}},
      axes: [{}, {size: 56}],
      series: [{}].concat(spec.series.map(function (s) {
        // depths are samples (one a second at most): a second without one is joined
        return {label: s[1], stroke: s[2], width: 1.5, spanGaps: !!spec.samples,
                points: {show: data.width > 1}};
      }))
    };
    charts[spec.id] = {key: key, plot: new window.uPlot(options, columns, element)};
  }

  function load() {
    fetch(base + "/api/history?resolution=" + encodeURIComponent(resolution),
          {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        CHARTS.forEach(function (spec) { draw(spec, data); });
        root.setAttribute("data-loaded", data.resolution);
      })
      .catch(function () { root.setAttribute("data-loaded", "failed"); });
  }

  function start() {
    if (timer) { window.clearInterval(timer); }
    load();
    timer = window.setInterval(load, resolution === "second" ? 2000 : 30000);
  }

  root.querySelectorAll("button[data-resolution]").forEach(function (button) {
    button.addEventListener("click", function () {
      resolution = button.getAttribute("data-resolution");
      root.setAttribute("data-resolution", resolution);
      root.querySelectorAll("button[data-resolution]").forEach(function (b) {
        b.setAttribute("aria-pressed", String(b === button));
      });
      start();
    });
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var element = document.getElementById("chart-" + id);
      charts[id].plot.setSize({width: width(element), height: 180});
    });
  });
  start();
})();
