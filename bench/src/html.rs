//! `report.html`: one self-contained page (inline CSS and SVG, no scripts to fetch) with the
//! run's figures and plots of rate, latency, load, failures and media gaps over time. Hook
//! times are drawn on every plot.

use std::fmt::Write as _;

use crate::report::Summary;
use crate::stats::{GapEvent, IntervalRow, Side};

const W: f64 = 900.0;
const H: f64 = 276.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 36.0;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f",
];

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Line,
    Dashed,
    Dots,
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    style: Style,
}

fn series(name: &str, style: Style, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.to_owned(),
        points,
        style,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step (1, 2 or 5 x 10^n) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A line/scatter chart over time with the hooks as vertical markers.
fn chart(
    title: &str,
    y_label: &str,
    all: &[Series],
    x_max: f64,
    markers: &[(f64, String)],
) -> String {
    let mut svg = String::new();
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let y_max_data = all
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if y_max_data > 0.0 { y_max_data } else { 1.0 };
    let y_step = nice_step(top, 5.0);
    let y_max = (top / y_step).ceil() * y_step;
    let x_max = x_max.max(1.0);
    let x_step = nice_step(x_max, 10.0);
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |y: f64| TOP + ph - (y / y_max).clamp(0.0, 1.05) * ph;
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for k in 0..=((y_max / y_step).round() as usize).min(20) {
        let y = k as f64 * y_step;
        let py = sy(y);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 4.0,
            py + 4.0,
            fmt_tick(y)
        );
    }
    for k in 0..=((x_max / x_step).floor() as usize).min(40) {
        let x = k as f64 * x_step;
        let px = sx(x);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 14.0,
            fmt_tick(x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>"#,
        LEFT + pw / 2.0,
        H - 4.0
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for (at, name) in markers {
        let px = sx(*at);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="2,3"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
            TOP + ph,
            px + 3.0,
            TOP + 10.0,
            esc(name)
        );
    }
    for (i, s) in all.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        match s.style {
            Style::Dots => {
                for &(x, y) in &s.points {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{color}" fill-opacity="0.6"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
            Style::Line | Style::Dashed => {
                if s.points.is_empty() {
                    continue;
                }
                let path: Vec<String> = s
                    .points
                    .iter()
                    .filter(|p| p.1.is_finite())
                    .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                    .collect();
                let dash = if s.style == Style::Dashed {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                };
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{}"/>"#,
                    path.join(" ")
                );
            }
        }
        let lx = LEFT + 10.0 + i as f64 * 150.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            TOP - 18.0,
            lx + 14.0,
            TOP - 9.0,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn row(cells: &[String]) -> String {
    let mut r = String::from("<tr>");
    for c in cells {
        let _ = write!(r, "<td>{c}</td>");
    }
    r.push_str("</tr>");
    r
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = String::from("<table><tr>");
    for h in head {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr>");
    for r in rows {
        t.push_str(&row(r));
    }
    t.push_str("</table>");
    t
}

/// The hotline calls by menu key, VIP and survey, as the harness made them and as the node
/// recorded them, with the first calls the two see differently.
fn hotline_section(h: &crate::report::Hotline) -> String {
    let c = &h.harness;
    let key = |m: &std::collections::BTreeMap<String, u64>, k: &str| {
        m.get(k).copied().unwrap_or(0).to_string()
    };
    let mut keys: Vec<&String> = c.keys.keys().collect();
    if let Some(n) = &h.node {
        keys.extend(n.node_menu.keys());
    }
    keys.sort();
    keys.dedup();
    let mut rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                format!("menu key {}", esc(k)),
                key(&c.keys, k),
                h.node.as_ref().map_or("-".into(), |n| key(&n.node_menu, k)),
            ]
        })
        .collect();
    let surveys: u64 = c.survey_keys.values().sum();
    rows.push(vec![
        "VIP (priority)".into(),
        c.vip.to_string(),
        h.node
            .as_ref()
            .map_or("-".into(), |n| n.node_vip.to_string()),
    ]);
    rows.push(vec![
        "survey key pressed".into(),
        surveys.to_string(),
        h.node
            .as_ref()
            .map_or("-".into(), |n| n.node_surveys.to_string()),
    ]);
    let mut out = format!(
        "<h2>Hotline (flow {})</h2><p>{} calls; {} checked call by call against their records. \
         Callbacks are not simulated (the node has none yet).</p>{}",
        esc(&h.flow),
        c.calls,
        c.checked,
        table(&["", "harness", "node records"], &rows)
    );
    if let Some(n) = &h.node
        && !n.examples.is_empty()
    {
        out.push_str("<p class=bad>Calls seen differently:</p><ul>");
        for e in &n.examples {
            let _ = write!(out, "<li><code>{}</code></li>", esc(e));
        }
        out.push_str("</ul>");
    }
    out
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

pub fn render(s: &Summary, rows: &[IntervalRow], gaps: &[GapEvent]) -> String {
    let x_max = rows.last().map_or(1.0, |r| r.t_s);
    let markers: Vec<(f64, String)> = s
        .hooks
        .iter()
        .map(|h| (h.started_s, h.name.chars().take(40).collect()))
        .collect();
    let pts = |f: &dyn Fn(&IntervalRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.t_s, f(r))).collect()
    };
    let gap_points = |side: Side| -> Vec<(f64, f64)> {
        gaps.iter()
            .filter(|g| g.side == side)
            .map(|g| (g.at_s, g.gap_ms))
            .collect()
    };
    let mut charts = vec![
        chart(
            "Calls per second",
            "calls/s",
            &[
                series("offered", Style::Line, pts(&|r| r.offered_cps)),
                series("achieved (answered)", Style::Line, pts(&|r| r.achieved_cps)),
                series("target rate", Style::Dashed, pts(&|r| r.gauges.target_cps)),
            ],
            x_max,
            &markers,
        ),
        chart(
            "Set-up latency (INVITE to 200 OK), per interval",
            "ms",
            &[
                series("p50", Style::Line, pts(&|r| r.setup_p50_ms)),
                series("p99", Style::Line, pts(&|r| r.setup_p99_ms)),
                series("max", Style::Dashed, pts(&|r| r.setup_max_ms)),
            ],
            x_max,
            &markers,
        ),
        chart(
            "Calls in progress and busy agents",
            "count",
            &[
                series(
                    "active calls",
                    Style::Line,
                    pts(&|r| r.gauges.active_calls as f64),
                ),
                series(
                    "busy agents",
                    Style::Line,
                    pts(&|r| r.gauges.busy_agents as f64),
                ),
            ],
            x_max,
            &markers,
        ),
        chart(
            "Failures per interval",
            "calls",
            &[
                series("failed", Style::Line, pts(&|r| r.failed as f64)),
                series("dropped", Style::Line, pts(&|r| r.dropped as f64)),
                series("abandoned", Style::Line, pts(&|r| r.abandoned as f64)),
            ],
            x_max,
            &markers,
        ),
        chart(
            "Media gaps: silences above the threshold, plotted when they ended (or at the hang-up)",
            "ms",
            &[
                series("caller legs", Style::Dots, gap_points(Side::Caller)),
                series("agent legs", Style::Dots, gap_points(Side::Agent)),
            ],
            x_max,
            &markers,
        ),
        chart(
            "Harness load",
            "% of a core / ms",
            &[
                series(
                    "process CPU %",
                    Style::Line,
                    pts(&|r| r.gauges.harness_cpu_pct),
                ),
                series(
                    "busiest thread %",
                    Style::Line,
                    pts(&|r| r.gauges.busiest_thread_pct),
                ),
                series(
                    "RTP tick lag max (ms)",
                    Style::Dashed,
                    pts(&|r| r.gauges.tick_lag_max_ms),
                ),
                series(
                    "watched CPU %",
                    Style::Line,
                    pts(&|r| r.gauges.watched_cpu_pct),
                ),
            ],
            x_max,
            &markers,
        ),
    ];
    if s.resources.is_some() {
        charts.push(chart(
            "Watched processes: memory and open files",
            "MiB / fds",
            &[
                series("RSS MiB", Style::Line, pts(&|r| r.gauges.watched_rss_mib)),
                series(
                    "open fds",
                    Style::Line,
                    pts(&|r| r.gauges.watched_fds as f64),
                ),
            ],
            x_max,
            &markers,
        ));
    }

    let c = &s.calls;
    let l = &s.latency_ms;
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), f1);
    let overview = table(
        &["figure", "value"],
        &[
            vec!["offered calls".into(), c.offered.to_string()],
            vec!["answered".into(), c.answered.to_string()],
            vec!["abandoned".into(), c.abandoned.to_string()],
            vec!["failed (never answered)".into(), c.failed.to_string()],
            vec![
                "dropped (answered, then lost)".into(),
                c.dropped.to_string(),
            ],
            vec![
                "offered / achieved calls/s".into(),
                format!("{:.1} / {:.1}", s.rates.offered_cps, s.rates.achieved_cps),
            ],
            vec![
                "service level (harness)".into(),
                format!(
                    "{}% within {} s",
                    opt(s.service.service_level_pct),
                    s.service.service_level_secs
                ),
            ],
            vec![
                "abandon rate (harness)".into(),
                format!("{}%", opt(s.service.abandon_rate_pct)),
            ],
            vec![
                "average wait of answered calls (harness)".into(),
                format!("{} ms", opt(s.service.avg_wait_ms)),
            ],
            vec![
                "sustained maximum".into(),
                s.sustained_max_cps.map_or("-".into(), |v| {
                    format!(
                        "{v:.0} calls/s ({})",
                        s.limited_by.clone().unwrap_or_default()
                    )
                }),
            ],
        ],
    );
    let lat_row = |name: &str, p: &crate::stats::Percentiles| {
        vec![
            name.to_owned(),
            p.count.to_string(),
            f2(p.mean),
            f2(p.p50),
            f2(p.p90),
            f2(p.p99),
            f2(p.p999),
            f2(p.max),
        ]
    };
    let latency = table(
        &[
            "latency (ms)",
            "count",
            "mean",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
        ],
        &[
            lat_row("set-up (INVITE to 200)", &l.setup),
            lat_row("first response with SDP", &l.first_response),
            lat_row("queue wait", &l.queue_wait),
            lat_row("answer relay (agent 200 to caller 200)", &l.answer_relay),
            lat_row("talk", &l.talk),
            lat_row("harness RTP tick lag", &s.harness.tick_lag_ms),
        ],
    );
    let media_row = |name: &str, m: &crate::report::MediaSide| {
        vec![
            name.to_owned(),
            m.legs.to_string(),
            m.legs_without_audio.to_string(),
            format!("{:.3}", m.loss_pct),
            m.legs_lossy.to_string(),
            f2(m.jitter_ms.p50),
            f2(m.jitter_ms.p99),
            f1(m.max_gap_ms.p99),
            f1(m.max_gap_ms.max),
            f1(m.first_packet_ms.p50),
        ]
    };
    let media = table(
        &[
            "RTP received",
            "legs",
            "no audio",
            "loss %",
            "legs > 1% loss",
            "jitter p50",
            "jitter p99",
            "max gap p99",
            "max gap",
            "first packet p50 (ms)",
        ],
        &[
            media_row("by callers", &s.media.caller),
            media_row("by agents", &s.media.agent),
        ],
    );
    let causes: Vec<Vec<String>> = c
        .failures
        .iter()
        .map(|(k, v)| vec!["failed".into(), esc(k), v.to_string()])
        .chain(
            c.drops
                .iter()
                .map(|(k, v)| vec!["dropped".into(), esc(k), v.to_string()]),
        )
        .collect();
    let causes = if causes.is_empty() {
        "<p>No failures.</p>".to_owned()
    } else {
        table(&["outcome", "cause", "calls"], &causes)
    };
    let cross = if s.cross_check.is_empty() {
        "<p>No cluster API given (--http): nothing to compare.</p>".to_owned()
    } else {
        table(
            &["figure", "harness", "cluster", "difference %", ""],
            &s.cross_check
                .iter()
                .map(|x| {
                    vec![
                        esc(&x.metric),
                        f1(x.harness),
                        f1(x.server),
                        f1(x.diff_pct),
                        if x.ok {
                            "ok".into()
                        } else {
                            "<b class=bad>differs</b>".into()
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        )
    };
    let hotline = s.hotline.as_ref().map_or(String::new(), hotline_section);
    let steps = if s.steps.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Ramp stairs</h2>{}",
            table(
                &[
                    "stair",
                    "from s",
                    "rate",
                    "offered",
                    "answered",
                    "failed %",
                    "set-up p50",
                    "set-up p99",
                    "node CPU %",
                    "harness CPU %",
                    "harness saturated",
                    "ok"
                ],
                &s.steps
                    .iter()
                    .map(|st| {
                        vec![
                            st.index.to_string(),
                            f1(st.start_s),
                            f1(st.rate_cps),
                            st.offered.to_string(),
                            st.answered.to_string(),
                            format!("{:.3}", st.failed_pct),
                            f2(st.setup_p50_ms),
                            f2(st.setup_p99_ms),
                            format!("{:.0}", st.watched_cpu_pct),
                            format!("{:.0}", st.harness_cpu_pct),
                            if st.harness_saturated {
                                "<b class=bad>yes</b>".into()
                            } else {
                                "no".into()
                            },
                            if st.ok {
                                "yes".into()
                            } else {
                                "<b class=bad>no</b>".into()
                            },
                        ]
                    })
                    .collect::<Vec<_>>()
            )
        )
    };
    let pass = table(
        &["criterion", "actual", "limit", ""],
        &s.pass
            .criteria
            .iter()
            .map(|cr| {
                vec![
                    esc(&cr.name),
                    esc(&cr.actual),
                    esc(&cr.limit),
                    if cr.ok {
                        "ok".into()
                    } else {
                        "<b class=bad>FAIL</b>".into()
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    let hooks = if s.hooks.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Hooks</h2>{}",
            table(
                &["name", "at s", "started s", "took s", "exit"],
                &s.hooks
                    .iter()
                    .map(|h| {
                        vec![
                            esc(&h.name),
                            f1(h.at_s),
                            f1(h.started_s),
                            f2(h.took_s),
                            h.exit_code.map_or_else(
                                || esc(h.error.as_deref().unwrap_or("signal")),
                                |c| c.to_string(),
                            ),
                        ]
                    })
                    .collect::<Vec<_>>()
            )
        )
    };
    let saturation = if s.harness.saturated || s.harness.descheduled_intervals > 0 {
        format!(
            "<p class=warn>Harness saturated in {} intervals and descheduled (waiting for a CPU) in {}: {}. Latencies and gaps in those intervals may be the harness's own.</p>",
            s.harness.saturated_intervals,
            s.harness.descheduled_intervals,
            esc(&s.harness.reasons.join("; "))
        )
    } else {
        format!(
            "<p>The harness was not saturated (busiest thread at most {:.0}% of a core, RTP tick lag p99 {:.2} ms).</p>",
            s.harness.busiest_thread_pct_max, s.harness.tick_lag_ms.p99
        )
    };
    let verdict = if s.pass.ok {
        "<span class=good>PASS</span>"
    } else {
        "<span class=bad>FAIL</span>"
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>switchyard-bench: {name}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 960px; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.bad {{ color: #c00; }} .good {{ color: #080; }}
.warn {{ background: #fff3cd; padding: 8px; border: 1px solid #e0c060; }}
svg {{ display: block; margin: 8px 0 18px; }}
</style></head><body>
<h1>{name} {verdict}</h1>
<p>{desc}</p>
<p>Run <code>{tag}</code>: {arrivals}, base rate {rate:.2} calls/s, time scale {scale}, {agents} agents,
targets {targets}. Arrivals for {arr:.0} s, {wall:.0} s in all{interrupted}.</p>
{saturation}
<h2>Pass criteria</h2>{pass}
<h2>Overview</h2>{overview}
<h2>Harness and cluster, side by side</h2>{cross}
{hotline}<h2>Latency</h2>{latency}
<h2>Media</h2>{media}
<h2>Failures by cause</h2>{causes}
{steps}{hooks}
<h2>Over time</h2>
{charts}
<p>Files: summary.json (every figure), intervals.csv (one row per interval), calls.csv (one row per call).</p>
</body></html>
"#,
        name = esc(&s.scenario.name),
        desc = esc(&s.scenario.description),
        tag = esc(&s.run.tag),
        arrivals = esc(&s.scenario.arrivals),
        rate = s.scenario.base_rate_cps,
        scale = s.scenario.time_scale,
        agents = s.scenario.agents,
        targets = esc(&s.scenario.targets.join(", ")),
        arr = s.run.arrival_s,
        wall = s.run.wall_s,
        interrupted = if s.run.interrupted {
            " (interrupted)"
        } else {
            ""
        },
        charts = charts.join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn chart_is_svg_with_markers() {
        let svg = chart(
            "t <1>",
            "ms",
            &[series("a", Style::Line, vec![(0.0, 1.0), (10.0, 5.0)])],
            10.0,
            &[(5.0, "kill node2".into())],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("kill node2"));
        assert!(svg.contains("<polyline"));
    }
}
