//! The report as one self-contained HTML page: tables, and plots drawn as inline SVG with
//! plotters (no scripts, no files beside it, nothing fetched when it is opened).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use plotters::prelude::*;

use super::{HourFigures, Report};

const WIDTH: u32 = 760;
const HEIGHT: u32 = 340;

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One line of a plot.
struct Line<'a> {
    name: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// The upper end of an axis: a little above the largest value, never an empty range.
fn top(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0f64, f64::max);
    if max > 0.0 { max * 1.1 } else { 1.0 }
}

/// A line plot as SVG; `log_x` puts the x axis on a logarithmic scale (x > 0).
fn plot(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>], log_x: bool) -> String {
    plot_marked(title, x_label, y_label, lines, log_x, &[])
}

/// [`plot`] with dashed vertical lines at `marks` (x values: the loop's decisions).
fn plot_marked(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>], log_x: bool, marks: &[f64]) -> String {
    let mut svg = String::new();
    let xs = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let x_min = xs().fold(f64::INFINITY, f64::min);
    let x_max = xs().fold(f64::NEG_INFINITY, f64::max);
    if !x_min.is_finite() {
        return String::from("<p>(no data)</p>");
    }
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let y_max = top(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, (title, x_label, y_label), lines, (x_min, x_max, y_max), log_x, marks)
    };
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>(plot failed: {})</p>", escape(&e.to_string())),
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (title, x_label, y_label): (&str, &str, &str),
    lines: &[Line<'_>],
    (x_min, x_max, y_max): (f64, f64, f64),
    log_x: bool,
    marks: &[f64],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(60);
    if log_x {
        let chart = builder.build_cartesian_2d((x_min.max(1e-9)..x_max).log_scale(), 0.0..y_max)?;
        draw_lines(chart, x_label, y_label, lines, false)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
        let dash = MAX.mix(0.6).stroke_width(1);
        for &x in marks.iter().filter(|x| (x_min..=x_max).contains(*x)) {
            chart.draw_series(DashedLineSeries::new([(x, 0.0), (x, y_max)], 4, 4, dash))?;
        }
        draw_lines(chart, x_label, y_label, lines, true)?;
    }
    root.present()?;
    Ok(())
}

/// The mesh, the lines (with a dot on each point when `dots`) and their legend.
fn draw_lines<'a, DB, X>(
    mut chart: ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    x_label: &str,
    y_label: &str,
    lines: &[Line<'_>],
    dots: bool,
) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if dots {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 2, color.filled())))?;
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// Grouped bars: for each label, one bar per series (name, colour, values by label).
fn bars(title: &str, y_label: &str, labels: &[String], series: &[(&str, RGBColor, Vec<f64>)]) -> String {
    let mut svg = String::new();
    let y_max = top(series.iter().flat_map(|s| s.2.iter().copied()));
    let drawn = (|| -> DrawResult {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = labels.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n, 0.0..y_max)?;
        let name = |x: &f64| labels.get(x.floor() as usize).cloned().unwrap_or_default();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&|x| if (x.fract() - 0.5).abs() < 0.01 { name(x) } else { String::new() })
            .y_desc(y_label)
            .draw()?;
        let width = 0.8 / series.len() as f64;
        for (k, (series_name, color, values)) in series.iter().enumerate() {
            let color = *color;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + k as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
                }))?
                .label(*series_name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p>(plot failed: {})</p>", escape(&e.to_string())),
    }
}

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);
const MAX: RGBColor = RGBColor(127, 127, 127);
const THROUGHPUT: RGBColor = RGBColor(44, 160, 44);
const CEILING: RGBColor = RGBColor(148, 103, 189);

fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// The demo's verdict and the loop's timeline, when the run has them.
fn loop_section(out: &mut String, report: &Report) {
    if let Some(verdict) = &report.verdict {
        let _ = write!(out, "<p><b>{}</b></p>", escape(verdict));
    }
    if report.timeline.is_empty() {
        return;
    }
    out.push_str("<h2>The loop: versions, gates, rollout steps and decisions</h2>");
    let rows: Vec<Vec<String>> = report
        .timeline
        .iter()
        .map(|e| {
            vec![
                format!("{:+.0} s", e.at_s),
                e.kind.clone(),
                e.version.map_or("-".into(), |v| format!("v{v}")),
                e.text.clone(),
            ]
        })
        .collect();
    table(out, &["when (since the load began)", "what", "version", "detail"], &rows);
}

/// Each version's CTR and expected RPM by simulated hour, beside the rankings of all requests.
fn hours_section(out: &mut String, report: &Report) {
    let simulated: BTreeSet<i64> = report.hours.iter().map(|h| h.hour_ms).collect();
    if simulated.len() < 2 {
        return;
    }
    let origin = *simulated.first().expect("two hours at least");
    let x = |hour_ms: i64| (hour_ms - origin) as f64 / 3_600_000.0;
    // All requests of an hour, whichever version served them: the rankings' reference lines.
    let mut all: BTreeMap<i64, (f64, [f64; 3])> = BTreeMap::new();
    for h in &report.hours {
        let entry = all.entry(h.hour_ms).or_default();
        let n = h.requests as f64;
        entry.0 += n;
        for (sum, rpm) in entry.1.iter_mut().zip([h.bid_only_rpm, h.ceiling_rpm, h.oracle_rpm]) {
            *sum += rpm * n;
        }
    }
    let reference = |k: usize| -> Vec<(f64, f64)> {
        all.iter().filter(|(_, (n, _))| *n > 0.0).map(|(hour, (n, sums))| (x(*hour), sums[k] / n)).collect()
    };
    let palette = [P50, THROUGHPUT, RGBColor(255, 127, 14), RGBColor(23, 190, 207), RGBColor(188, 189, 34)];
    let names: Vec<String> = {
        let mut names: Vec<String> = report.hours.iter().map(|h| h.version.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    // An hour a version served only a handful of requests in says nothing of it.
    let points = |name: &str, f: fn(&HourFigures) -> f64| -> Vec<(f64, f64)> {
        report.hours.iter().filter(|h| h.version == name && h.requests >= 20).map(|h| (x(h.hour_ms), f(h))).collect()
    };
    let mut rpm: Vec<Line<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Line { name, color: palette[i % palette.len()], points: points(name, |h| h.expected_rpm) })
        .collect();
    rpm.push(Line { name: "bid-only ranking", color: P99, points: reference(0) });
    rpm.push(Line { name: "learnable ceiling's ranking", color: CEILING, points: reference(1) });
    rpm.push(Line { name: "oracle ranking", color: MAX, points: reference(2) });
    out.push_str("<h3>Over simulated time</h3>");
    out.push_str(&plot("Expected RPM by simulated hour", "simulated hours since the load began", "RPM", &rpm, false));
    let ctr: Vec<Line<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Line { name, color: palette[i % palette.len()], points: points(name, |h| h.ctr) })
        .collect();
    out.push_str(&plot("CTR by simulated hour", "simulated hours since the load began", "CTR", &ctr, false));
    out.push_str(
        "<p class=\"note\">Each version's line covers the hours it served at least 20 requests in (during a rollout both arms \
         serve, each to its own users); the rankings' lines are over every request of the hour.</p>",
    );
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f4f4f4}}td:first-child{{text-align:left}}.note{{color:#666;font-size:90%}}\
         </style></head><body><h1>{title}</h1>",
        title = escape(&report.title)
    );
    let run = &report.run;
    let _ = write!(
        out,
        "<p>{mode} load on <code>{target}</code>, {arrivals} arrivals over {connections} connections. \
         Latency is measured from each request's intended send time (coordinated omission corrected).</p>",
        mode = escape(&report.mode),
        target = escape(&report.target),
        arrivals = escape(&report.arrivals),
        connections = report.connections
    );
    loop_section(&mut out, report);
    out.push_str("<h2>Run</h2>");
    let mut rows = vec![
        vec!["offered / achieved rate".into(), format!("{:.0} / {:.1} req/s", run.rate, run.achieved_rate)],
        vec!["measured requests".into(), format!("{} of {} scheduled", run.measured, run.scheduled)],
        vec!["replies by status".into(), format!("{:?}", run.statuses)],
        vec!["failures".into(), format!("{:?}", run.failures)],
        vec![format!("sent late (> {} ms)", run.late_threshold_ms), run.late.to_string()],
    ];
    rows.extend(run.latency_ms.iter().map(|(q, ms)| vec![format!("latency {q}"), format!("{ms:.2} ms")]));
    table(&mut out, &["what", "value"], &rows);

    let series = |f: fn(&crate::generator::Second) -> f64| -> Vec<(f64, f64)> {
        report.series.iter().map(|s| (s.second as f64, f(s))).collect()
    };
    let marks: Vec<f64> = report.timeline.iter().filter(|e| e.kind == "rollout").map(|e| e.at_s).collect();
    let mut lines = vec![
        Line { name: "p50", color: P50, points: series(|s| s.p50_ms) },
        Line { name: "p99", color: P99, points: series(|s| s.p99_ms) },
        Line { name: "max", color: MAX, points: series(|s| s.max_ms) },
    ];
    if report.series.iter().any(|s| s.errors > 0) {
        lines.push(Line { name: "errors", color: CEILING, points: series(|s| s.errors as f64) });
    }
    let title = if marks.is_empty() { "Latency over time" } else { "Latency over time (dashed: rollout decisions)" };
    out.push_str(&plot_marked(title, "seconds since start", "ms (errors: count)", &lines, false, &marks));
    // x = 1/(1-q): 10 is p90, 100 is p99 …
    let curve: Vec<(f64, f64)> =
        report.percentiles.iter().map(|p| (1.0 / (1.0 - p.percentile / 100.0).max(1e-9), p.ms)).collect();
    out.push_str(&plot(
        "Latency by percentile",
        "1/(1-q): 10 = p90, 100 = p99, 1000 = p99.9",
        "ms",
        &[Line { name: "latency", color: P99, points: curve }],
        true,
    ));

    if let Some(sweep) = &report.sweep {
        out.push_str("<h2>Rate sweep</h2>");
        let _ = write!(
            out,
            "<p>SLO: p99 at most {} ms, no errors, rate held within 1%. Knee: <b>{}</b>.</p>",
            sweep.slo.p99_ms,
            sweep.knee.map_or("none (the first step already failed)".into(), |k| format!("{k:.0} req/s"))
        );
        let mut steps = sweep.steps.clone();
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let rows: Vec<Vec<String>> = steps
            .iter()
            .map(|s| {
                vec![
                    format!("{:.0}", s.rate),
                    format!("{:.1}", s.achieved_rate),
                    format!("{:.1}", s.throughput),
                    format!("{:.2}", s.p50_ms),
                    format!("{:.2}", s.p99_ms),
                    format!("{:.2}", s.p999_ms),
                    s.errors.to_string(),
                    s.late.to_string(),
                    if s.held { "yes".into() } else { "no".into() },
                ]
            })
            .collect();
        table(
            &mut out,
            &["offered req/s", "achieved", "ok/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "late", "held"],
            &rows,
        );
        let points = |f: fn(&crate::generator::Step) -> f64| steps.iter().map(|s| (s.rate, f(s))).collect::<Vec<_>>();
        out.push_str(&plot(
            "Throughput against offered rate",
            "offered req/s",
            "successful replies/s",
            &[Line { name: "throughput", color: THROUGHPUT, points: points(|s| s.throughput) }],
            false,
        ));
        out.push_str(&plot(
            "Latency against offered rate",
            "offered req/s",
            "ms",
            &[
                Line { name: "p50", color: P50, points: points(|s| s.p50_ms) },
                Line { name: "p99", color: P99, points: points(|s| s.p99_ms) },
            ],
            false,
        ));
    }

    if let Some(server) = &report.server {
        out.push_str("<h2>Where the time went (the server's own timings)</h2>");
        let rows: Vec<Vec<String>> = ["features", "queue", "inference", "shown", "total", "outside"]
            .iter()
            .filter_map(|name| server.stages.get(*name).map(|s| (name, s)))
            .map(|(name, s)| {
                vec![
                    name.to_string(),
                    format!("{:.3}", s.mean),
                    format!("{:.3}", s.p50),
                    format!("{:.3}", s.p99),
                    format!("{:.3}", s.p999),
                ]
            })
            .collect();
        table(&mut out, &["stage", "mean ms", "p50 ms", "p99 ms", "p99.9 ms"], &rows);
        let _ = write!(
            out,
            "<p class=\"note\">{} replies; by model version: {}; rows per model run: mean {:.0}, median {}; degraded \
             (features from defaults): {}; unparsable replies: {}. <i>outside</i> is the client's latency minus the \
             server's total at the same percentile.</p>",
            server.replies,
            escape(&format!("{:?}", server.versions)),
            server.batch_rows_mean,
            server.batch_rows_p50,
            server.degraded,
            server.unparsable
        );
    }

    if !report.versions.is_empty() {
        out.push_str("<h2>Business figures by model version (closed loop)</h2>");
        let rows: Vec<Vec<String>> = report
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.clone(),
                    v.requests.to_string(),
                    v.clicks.to_string(),
                    format!("{:.4}", v.ctr),
                    format!("{:.4} / {:.4}", v.predicted_ctr, v.true_ctr),
                    format!("{:.2}", v.rpm),
                    format!("{:.2}", v.expected_rpm),
                    format!("{:.2}", v.bid_only_rpm),
                    format!("{:.2}", v.ceiling_rpm),
                    format!("{:.2}", v.oracle_rpm),
                    format!("{:.2}", v.regret_rpm),
                    format!("{:.2}x", v.expected_rpm / v.bid_only_rpm),
                    format!("{:.2}x", v.expected_rpm / v.ceiling_rpm),
                    format!("{:.1}%", 100.0 * v.oracle_share),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "version",
                "requests",
                "clicks",
                "CTR",
                "pCTR / true CTR",
                "RPM",
                "expected RPM",
                "bid-only RPM",
                "ceiling RPM",
                "oracle RPM",
                "regret RPM",
                "vs bid-only",
                "vs ceiling",
                "of oracle",
            ],
            &rows,
        );
        let rows: Vec<Vec<String>> = report
            .versions
            .iter()
            .flat_map(|v| {
                let position = v.calibration_by_position.iter().map(move |c| (v, "position", c));
                position.chain(v.calibration_by_decile.iter().map(move |c| (v, "pCTR decile", c)))
            })
            .map(|(v, by, c)| {
                vec![
                    v.version.clone(),
                    by.into(),
                    escape(&c.group),
                    c.slots.to_string(),
                    format!("{:.4}", c.predicted_ctr),
                    format!("{:.4}", c.true_ctr),
                    format!("{:.2}", c.ratio()),
                ]
            })
            .collect();
        out.push_str("<h3>Calibration of the shown slots</h3>");
        table(&mut out, &["version", "by", "group", "slots", "predicted CTR", "true CTR", "predicted / true"], &rows);
        let labels: Vec<String> = report.versions.iter().map(|v| v.version.clone()).collect();
        out.push_str(&bars(
            "Revenue per thousand requests, by version",
            "RPM",
            &labels,
            &[
                ("realised", P50, report.versions.iter().map(|v| v.rpm).collect()),
                ("expected (true CTR x bid)", THROUGHPUT, report.versions.iter().map(|v| v.expected_rpm).collect()),
                ("bid-only ranking", P99, report.versions.iter().map(|v| v.bid_only_rpm).collect()),
                ("learnable ceiling's ranking", CEILING, report.versions.iter().map(|v| v.ceiling_rpm).collect()),
                ("oracle ranking", MAX, report.versions.iter().map(|v| v.oracle_rpm).collect()),
            ],
        ));
        out.push_str(
            "<p class=\"note\">RPM: revenue (bids of clicked ads) per thousand requests. Expected figures use the world's true \
             click probabilities of the shown slots; the oracle ranks the same candidates by true probability x bid, \
             the learnable ceiling by the truth without users' and ads' individual taste (what a model learns from attributes) x bid, \
             the baseline by bid alone. Regret is what the version lost against the oracle.</p>",
        );
        hours_section(&mut out, report);
        if let Some(clicks) = &report.clicks {
            let _ = write!(
                out,
                "<p class=\"note\">Clicks sent to the server: {} accepted, refused {:?}, replies naming foreign ads: {}.</p>",
                clicks.accepted, clicks.refused, clicks.foreign_ads
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}
