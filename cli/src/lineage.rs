//! `meshq lineage`: the graph of products their input ports declare, as
//! Mermaid, Graphviz DOT, JSON or SVG (laid out in-process).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Result, anyhow};
use meshq_catalog::{LineageEdge, Mesh, ProductInfo};

/// Output formats of `meshq lineage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineageFormat {
    /// A Mermaid flowchart (renders on GitHub and in most wikis).
    Mermaid,
    /// Graphviz DOT.
    Dot,
    /// Products and edges as JSON.
    Json,
    /// An SVG picture, laid out without Graphviz.
    Svg,
}

/// The products and edges to draw: every product, or the ones upstream and
/// downstream of `focus`.
pub struct Graph<'a> {
    /// Products, by id.
    pub products: BTreeMap<&'a str, &'a ProductInfo>,
    /// Edges among them.
    pub edges: Vec<LineageEdge>,
}

impl<'a> Graph<'a> {
    /// The lineage of `mesh`, limited to what is connected to `focus` (a
    /// product id, or a name or domain that picks exactly one product).
    pub fn of(mesh: &'a Mesh, focus: Option<&str>) -> Result<Self> {
        let all = mesh.lineage();
        let Some(focus) = focus else {
            return Ok(Self {
                products: mesh
                    .products
                    .iter()
                    .map(|p| (p.id.as_str(), &**p))
                    .collect(),
                edges: all,
            });
        };
        let matches: Vec<&ProductInfo> = mesh
            .products
            .iter()
            .filter(|p| p.id == focus || p.name.as_deref() == Some(focus))
            .map(|p| &**p)
            .collect();
        let start = match matches.as_slice() {
            [one] => one.id.as_str(),
            [] => {
                return Err(anyhow!(
                    "no product `{focus}` in the mesh; `meshq lineage --mesh DIR` lists them all"
                ));
            }
            _ => return Err(anyhow!("`{focus}` names several products; give its id")),
        };
        // Upstream and downstream, transitively.
        let mut keep: BTreeSet<String> = BTreeSet::from([start.to_string()]);
        for downstream in [false, true] {
            let mut frontier = vec![start.to_string()];
            while let Some(at) = frontier.pop() {
                for e in &all {
                    let (from, to) = if downstream {
                        (&e.from_product, &e.to_product)
                    } else {
                        (&e.to_product, &e.from_product)
                    };
                    if *from == at && keep.insert(to.clone()) {
                        frontier.push(to.clone());
                    }
                }
            }
        }
        Ok(Self {
            products: mesh
                .products
                .iter()
                .filter(|p| keep.contains(&p.id))
                .map(|p| (p.id.as_str(), &**p))
                .collect(),
            edges: all
                .into_iter()
                .filter(|e| keep.contains(&e.from_product) && keep.contains(&e.to_product))
                .collect(),
        })
    }

    /// Short node ids (`p0`, `p1`, …) in product order.
    fn ids(&self) -> BTreeMap<&str, String> {
        self.products
            .keys()
            .enumerate()
            .map(|(i, id)| (*id, format!("p{i}")))
            .collect()
    }

    /// An edge's label in a picture: the input port's name (the contract id
    /// is in the JSON and in `meta.lineage`).
    fn port(e: &LineageEdge) -> &str {
        e.via.split(" (").next().unwrap_or(&e.via)
    }

    fn label(p: &ProductInfo) -> String {
        format!("{}.{}", p.domain, p.name.as_deref().unwrap_or(&p.id))
    }

    /// A Mermaid flowchart, left to right.
    pub fn mermaid(&self) -> String {
        let ids = self.ids();
        let mut out = String::from("flowchart LR\n");
        for (id, p) in &self.products {
            let _ = writeln!(
                out,
                "  {}[\"{}<br/><small>{}</small>\"]",
                ids[id],
                mermaid_text(&Self::label(p)),
                mermaid_text(id)
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                out,
                "  {} -->|\"{}\"| {}",
                ids[e.from_product.as_str()],
                mermaid_text(Self::port(e)),
                ids[e.to_product.as_str()]
            );
        }
        out
    }

    /// Graphviz DOT, left to right.
    pub fn dot(&self) -> String {
        let ids = self.ids();
        let mut out =
            String::from("digraph lineage {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
        for (id, p) in &self.products {
            let _ = writeln!(
                out,
                "  {} [label=\"{}\"]; // {}",
                ids[id],
                dot_text(&Self::label(p)),
                id.replace('\n', " ")
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                out,
                "  {} -> {} [label=\"{}\"];",
                ids[e.from_product.as_str()],
                ids[e.to_product.as_str()],
                dot_text(Self::port(e))
            );
        }
        out.push_str("}\n");
        out
    }

    /// Products and edges as JSON.
    pub fn json(&self, mesh: &Mesh) -> String {
        let products: Vec<_> = self
            .products
            .values()
            .map(|p| {
                serde_json::json!({
                    "product_id": p.id,
                    "name": p.name,
                    "domain": p.domain,
                    "owner_team": p.owner_team,
                    "status": p.status,
                })
            })
            .collect();
        let edges: Vec<_> = self
            .edges
            .iter()
            .map(|e| {
                serde_json::json!({
                    "from_product": e.from_product,
                    "to_product": e.to_product,
                    "via": e.via,
                    "declared_in": mesh.display_path(&e.declared_in),
                })
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "products": products,
            "edges": edges,
        }))
        .unwrap_or_default();
        text.push('\n');
        text
    }

    /// An SVG picture of the DOT graph, laid out in-process.
    pub fn svg(&self) -> Result<String> {
        use layout::backends::svg::SVGWriter;
        use layout::gv::{DotParser, GraphBuilder};
        if self.products.is_empty() {
            return Ok(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>\n"
                    .into(),
            );
        }
        let dot = self.dot();
        let mut parser = DotParser::new(&dot);
        let tree = parser
            .process()
            .map_err(|e| anyhow!("laying out the lineage graph: {e}"))?;
        let mut builder = GraphBuilder::new();
        builder.visit_graph(&tree);
        let mut graph = builder.get();
        let mut svg = SVGWriter::new();
        graph.do_it(false, false, false, &mut svg);
        Ok(svg.finalize())
    }
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

fn dot_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `meshq lineage`'s output for `mesh`.
pub fn render(mesh: &Mesh, focus: Option<&str>, format: LineageFormat) -> Result<String> {
    let graph = Graph::of(mesh, focus)?;
    Ok(match format {
        LineageFormat::Mermaid => graph.mermaid(),
        LineageFormat::Dot => graph.dot(),
        LineageFormat::Json => graph.json(mesh),
        LineageFormat::Svg => graph.svg()?,
    })
}
