// tunelab dashboard charts: every <figure class="chart"> on the page is drawn by uPlot (vendor/uplot) from
// /ui/api/runs/<run>/curves, polled while a run trains so a logged step shows within a few seconds.
// An external file on purpose: the app's Content-Security-Policy forbids inline scripts.
(function () {
  "use strict";
  // Every 2 s, whatever the run's state: a finished run can be resumed, and an unchanged log costs one stat.
  var POLL_MS = 2000, RETRY_MS = 10000;
  var SMOOTHED = { loss: true, grad_norm: true };   // sparse validation points are never smoothed
  var NAMES = { loss: "train loss", eval_loss: "validation loss", learning_rate: "learning rate", grad_norm: "grad norm" };
  var COLORS = ["#2f5fb3", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d5a97", "#30638e", "#b5651d"];

  var figures = Array.prototype.slice.call(document.querySelectorAll("figure.chart"));
  if (!figures.length || typeof uPlot === "undefined") return;
  var runs = {};     // run name -> {offset, state, points: {series: [[step, value], ...]}}
  figures.forEach(function (fig) {
    fig.dataset.runs.split(",").filter(Boolean).forEach(function (r) {
      runs[r] = runs[r] || { offset: 0, state: "new", points: {} };
    });
  });
  var smoothing = document.getElementById("smoothing");
  var logscale = document.getElementById("logscale");
  var stateLine = document.getElementById("live-state");
  var plots = new Map();

  function ema(values, weight) {
    // TensorBoard's debiased exponential moving average: early points are not pulled towards zero.
    var out = [], last = 0, n = 0;
    for (var i = 0; i < values.length; i++) {
      last = last * weight + (1 - weight) * values[i];
      n++;
      out.push(last / (1 - Math.pow(weight, n)));
    }
    return out;
  }

  function columns(fig) {
    // uPlot wants one x array and one y array per series, aligned: union of steps, null where a series has none.
    var wanted = fig.dataset.series.split(","), names = fig.dataset.runs.split(",").filter(Boolean);
    var weight = smoothing ? parseFloat(smoothing.value) : 0, log = logscale && logscale.checked;
    var lines = [], steps = new Set(), count = 0, lastStep = null;
    names.forEach(function (run) {
      wanted.forEach(function (key) {
        var pts = (runs[run].points[key] || []);
        count += pts.length;
        var ys = pts.map(function (p) { return p[1]; });
        if (weight > 0 && SMOOTHED[key]) ys = ema(ys, weight);
        var byStep = new Map();
        pts.forEach(function (p, i) {
          steps.add(p[0]);
          byStep.set(p[0], log && ys[i] <= 0 ? null : ys[i]);
          if (lastStep === null || p[0] > lastStep) lastStep = p[0];
        });
        var label = (names.length > 1 ? run + ": " : "") + NAMES[key];
        lines.push({ label: label, key: key, byStep: byStep });
      });
    });
    var xs = Array.from(steps).sort(function (a, b) { return a - b; });
    var data = [xs].concat(lines.map(function (l) {
      return xs.map(function (x) { return l.byStep.has(x) ? l.byStep.get(x) : null; });
    }));
    return { data: data, lines: lines, count: count, lastStep: lastStep };
  }

  function tick(v) {
    // Learning rates (1e-5) would all read "0" with the default labels.
    if (v === null) return "";
    return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(1) : String(+v.toPrecision(3));
  }

  function options(fig, lines) {
    var width = Math.max(280, fig.clientWidth - 8);
    return {
      width: width, height: 220,
      scales: { x: { time: false }, y: { distr: logscale && logscale.checked ? 3 : 1 } },
      axes: [{ label: "step" }, { size: 64, values: function (u, splits) { return splits.map(tick); } }],
      legend: { live: true },
      series: [{ label: "step" }].concat(lines.map(function (l, i) {
        var sparse = l.key === "eval_loss";
        return { label: l.label, stroke: COLORS[i % COLORS.length], width: sparse ? 2 : 1.5, spanGaps: true,
                 dash: sparse ? [6, 4] : undefined, points: { show: sparse } };
      })),
    };
  }

  function draw(fig, rebuild) {
    var c = columns(fig);
    fig.dataset.points = String(c.count);
    fig.dataset.lastStep = c.lastStep === null ? "" : String(c.lastStep);
    fig.querySelector(".empty").hidden = c.count > 0;
    var holder = fig.querySelector(".plot"), plot = plots.get(fig);
    if (c.count === 0) return;
    if (plot && !rebuild && plot.series.length === c.data.length) {
      plot.setData(c.data);
      return;
    }
    if (plot) plot.destroy();
    plots.set(fig, new uPlot(options(fig, c.lines), c.data, holder));
  }

  function merge(run, body) {
    var r = runs[run];
    if (body.reset) r.points = {};
    Object.keys(body.points).forEach(function (k) {
      r.points[k] = (r.points[k] || []).concat(body.points[k]);
    });
    r.offset = body.offset;
    r.state = body.state;
  }

  function poll() {
    var names = Object.keys(runs);
    Promise.all(names.map(function (run) {
      return fetch("/ui/api/runs/" + encodeURIComponent(run) + "/curves?offset=" + runs[run].offset,
                   { credentials: "same-origin", headers: { accept: "application/json" } })
        .then(function (resp) {
          if (resp.status === 401) throw new Error("signed out");
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.json();
        })
        .then(function (body) { merge(run, body); });
    })).then(function () {
      figures.forEach(function (fig) { draw(fig, false); });
      var live = names.some(function (n) { return runs[n].state === "running"; });
      // A run page whose run changed state (finished, failed, interrupted, resumed) reloads to show the new sections.
      var title = document.getElementById("run-title");
      if (title && names.length === 1 && runs[names[0]].state !== title.dataset.state) {
        window.location.reload();
        return;
      }
      if (stateLine) stateLine.textContent = (live ? "live, " : "") + "updated " + new Date().toLocaleTimeString();
      setTimeout(poll, POLL_MS);
    }).catch(function (err) {
      if (stateLine) stateLine.textContent = "not updating: " + err.message;
      if (err.message !== "signed out") setTimeout(poll, RETRY_MS);
    });
  }

  function redrawAll() { figures.forEach(function (fig) { draw(fig, true); }); }
  if (smoothing) smoothing.addEventListener("input", function () {
    var out = document.getElementById("smoothing-value");
    if (out) out.textContent = smoothing.value;
    redrawAll();
  });
  if (logscale) logscale.addEventListener("change", redrawAll);
  var resizeTimer = null;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(redrawAll, 200); });
  poll();
})();
