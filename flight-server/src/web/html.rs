//! The pages' frame, the tables and badges they share, and the lineage
//! drawing (inline SVG, no script).

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// A query result as text: column names, and each row's values (`None`
/// for NULL).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The value of `column` in row `i`.
    pub(crate) fn get(&self, i: usize, column: &str) -> Option<&str> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.rows.get(i)?.get(c)?.as_deref()
    }

    /// Row indexes.
    pub(crate) fn indexes(&self) -> std::ops::Range<usize> {
        0..self.rows.len()
    }
}

/// The page frame: header with navigation and who is logged in.
pub(crate) fn page(title: &str, who: Option<&str>, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · meshq" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header {
                    a.brand href="/" { "meshq" }
                    @if let Some(who) = who {
                        nav aria-label="Main" {
                            a href="/products" { "Products" }
                            a href="/lineage" { "Lineage" }
                            a href="/sql" { "SQL" }
                            a href="/me" { "Me (" (who) ")" }
                        }
                        @if let Some(csrf) = csrf {
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A status as a badge (`fresh`, `late`, `passed`, `failed`, …).
pub(crate) fn badge(label: &str, status: Option<&str>) -> Markup {
    let status = status.unwrap_or("unknown");
    let class = match status {
        "fresh" | "passed" | "true" => "ok",
        "late" | "failed" | "error" | "false" => "bad",
        "warning" => "warn",
        _ => "unknown",
    };
    html! { span class=(format!("badge {class}")) { (label) ": " (status) } }
}

/// A result as an HTML table (at most `limit` rows).
pub(crate) fn table(rows: &Rows, limit: usize) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { @for c in &rows.columns { th scope="col" { (c) } } } }
                tbody {
                    @for r in rows.rows.iter().take(limit) {
                        tr { @for v in r { td { @match v { Some(v) => (v), None => span.null { "NULL" } } } } }
                    }
                }
            }
        }
    }
}

/// A layered drawing of product lineage: `edges` (from, to) between
/// product ids, each node a link to its product page; `focus` drawn
/// highlighted.
pub(crate) fn lineage_svg(edges: &[(String, String)], focus: Option<&str>) -> Markup {
    let mut nodes: Vec<String> = Vec::new();
    for (a, b) in edges {
        for n in [a, b] {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
    }
    if let Some(f) = focus
        && !nodes.iter().any(|n| n == f)
    {
        nodes.push(f.to_string());
    }
    nodes.sort();
    // Depth: the longest path from a source (cycles are cut by a bound).
    let mut depth = vec![0usize; nodes.len()];
    // Each edge as the indexes of its two nodes.
    let pairs: Vec<(usize, usize)> = edges
        .iter()
        .filter_map(|(a, b)| {
            Some((
                nodes.iter().position(|n| n == a)?,
                nodes.iter().position(|n| n == b)?,
            ))
        })
        .collect();
    for _ in 0..nodes.len() {
        let mut changed = false;
        for &(i, j) in &pairs {
            if depth[j] < depth[i] + 1 && depth[i] + 1 < nodes.len() {
                depth[j] = depth[i] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let (w, h, gap_x, gap_y) = (260.0_f64, 36.0_f64, 80.0_f64, 18.0_f64);
    let mut row_of_depth: Vec<usize> = Vec::new();
    let mut pos = vec![(0.0, 0.0); nodes.len()];
    for (i, d) in depth.iter().enumerate() {
        if row_of_depth.len() <= *d {
            row_of_depth.resize(d + 1, 0);
        }
        let r = row_of_depth[*d];
        row_of_depth[*d] += 1;
        pos[i] = (
            10.0 + *d as f64 * (w + gap_x),
            10.0 + r as f64 * (h + gap_y),
        );
    }
    let width = 20.0 + row_of_depth.len().max(1) as f64 * (w + gap_x) - gap_x;
    let height = 20.0 + row_of_depth.iter().max().copied().unwrap_or(1).max(1) as f64 * (h + gap_y);
    let mut svg = format!(
        r#"<svg class="lineage" role="img" aria-label="Lineage" viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}" xmlns="http://www.w3.org/2000/svg">"#
    );
    svg.push_str(r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>"##);
    // Edges that skip a layer pass below the boxes between, each lower
    // than the last, so none seems to start at a box it passes.
    let mut long = 0usize;
    let mut paths = String::new();
    let mut bottom = height;
    for &(i, j) in &pairs {
        let (x1, y1) = (pos[i].0 + w, pos[i].1 + h / 2.0);
        let (x2, y2) = (pos[j].0, pos[j].1 + h / 2.0);
        if depth[j] > depth[i] + 1 {
            long += 1;
            let below = height - 10.0 + 14.0 * long as f64;
            bottom = bottom.max(below + 10.0);
            paths.push_str(&format!(
                r##"<path d="M {x1:.0} {y1:.0} C {:.0} {below:.0}, {:.0} {below:.0}, {x2:.0} {y2:.0}" fill="none" stroke="#555" stroke-dasharray="4 3" marker-end="url(#arrow)"/>"##,
                x1 + gap_x,
                x2 - gap_x,
            ));
        } else {
            paths.push_str(&format!(
                r##"<path d="M {x1:.0} {y1:.0} C {:.0} {y1:.0}, {:.0} {y2:.0}, {x2:.0} {y2:.0}" fill="none" stroke="#555" marker-end="url(#arrow)"/>"##,
                x1 + gap_x / 2.0,
                x2 - gap_x / 2.0
            ));
        }
    }
    let svg_open = svg.clone();
    svg = svg_open.replace(
        &format!(r#"viewBox="0 0 {width:.0} {height:.0}" width="{width:.0}" height="{height:.0}""#),
        &format!(r#"viewBox="0 0 {width:.0} {bottom:.0}" width="{width:.0}" height="{bottom:.0}""#),
    );
    svg.push_str(&paths);
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos[i];
        let label = n.strip_prefix("urn:dataproduct:").unwrap_or(n);
        let class = if Some(n.as_str()) == focus {
            "node focus"
        } else {
            "node"
        };
        svg.push_str(&format!(
            r#"<a href="/products/{}"><rect class="{class}" x="{x:.0}" y="{y:.0}" width="{w:.0}" height="{h:.0}" rx="6"/><text x="{:.0}" y="{:.0}">{}</text></a>"#,
            escape(&crate::web::form_urlencoded(n)),
            x + 10.0,
            y + h / 2.0 + 5.0,
            escape(label)
        ));
    }
    svg.push_str("</svg>");
    PreEscaped(svg)
}

/// Text for HTML and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The stylesheet, served from the binary.
pub(crate) const STYLE: &str = include_str!("style.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_is_layered_and_escaped() {
        let svg = lineage_svg(
            &[
                ("urn:dataproduct:a:x".into(), "urn:dataproduct:b:y".into()),
                ("urn:dataproduct:b:y".into(), "urn:dataproduct:c:<z>".into()),
            ],
            Some("urn:dataproduct:b:y"),
        )
        .into_string();
        assert!(svg.contains("c:&lt;z&gt;"), "{svg}");
        assert!(!svg.contains("<z>"), "{svg}");
        assert!(svg.contains(r#"class="node focus""#), "{svg}");
        // Three layers: x of 10, 350 and 690.
        for x in ["x=\"10\"", "x=\"350\"", "x=\"690\""] {
            assert!(svg.contains(x), "{x}: {svg}");
        }
    }
}
