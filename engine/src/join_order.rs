//! [`ReorderJoins`]: orders a query's inner joins by estimated size.
//!
//! DataFusion 55 joins tables in the order the query names them and only
//! swaps the two inputs of each join. TPC-H q7 names `supplier, lineitem,
//! orders, customer, nation, nation`: the two `nation` filters, the most
//! selective part of the query, are joined last, and every `orders` row is
//! put in a hash table on the way. This rule takes a tree of inner
//! equi-joins apart into its inputs ("leaves") and its conditions and
//! builds it again greedily: from each leaf that joins anything it adds,
//! one at a time, the connected leaf that gives the smallest estimated
//! result in bytes, with the smaller side on the left (the side
//! DataFusion's hash join builds), and keeps the cheapest of these
//! orders. An order costs the bytes of its intermediate results: rows
//! times the width of the columns still needed, those the plan above
//! reads and those a join still to come reads. Counting bytes, not rows,
//! joins narrow inputs before a wide one: TPC-H q10 joins `orders` with
//! `lineitem` before it brings in `customer`'s text columns, instead of
//! carrying them through the join with `lineitem` (on two workers, a
//! broadcast of 573 K wide rows to each).
//!
//! Estimates come from the tables' row counts (`TableProvider::statistics`,
//! which meshq fills from Delta logs, Iceberg manifests and, when the rule
//! is on for every session, local Parquet footers read at load),
//! fixed selectivities of filters, and the contracts' primary keys
//! (functional dependencies in the plan's schemas): a join on a leaf's
//! whole key keeps the other side's rows, scaled by how much of the keyed
//! table is left. A tree with a leaf of unknown size, a join that needs no
//! key (a cross join), or fewer than three leaves is left as it is.
//!
//! Only the order of inner joins changes: every leaf (a policy barrier
//! with its masked scan, a subquery, an outer join) stays whole, so no
//! predicate moves into or across one; each condition is evaluated at the
//! first join that has all its columns. A leaf behind row filters that
//! hide rows from the principal has no known size, so the total a policy
//! hides never steers a plan. The result is projected back to
//! the original columns in their order. On a single node the rule is off
//! unless a session turns it on (`SET meshq_plan.reorder_joins = true`):
//! without distinct counts its estimates do not beat the order of
//! well-written queries. A coordinator with workers turns it on by
//! default, since the rows a bad order makes are shuffled between them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, NullEquality, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Filter, Join, JoinConstraint, JoinType, Like, LogicalPlan, Operator,
    Projection,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use crate::policy::barrier::PolicyBarrier;

pub use meshq_connectors::PlanOptions;

/// The optimizer rule; runs after filter pushdown, so leaves carry their
/// filters.
#[derive(Debug, Default)]
pub struct ReorderJoins;

impl OptimizerRule for ReorderJoins {
    fn name(&self) -> &str {
        "meshq_reorder_joins"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let on = config
            .options()
            .extensions
            .get::<PlanOptions>()
            .is_some_and(|o| o.reorder_joins);
        if !on {
            return Ok(Transformed::no(plan));
        }
        let needed = plan.schema().columns().into_iter().collect();
        reorder(plan, &needed)
    }
}

static REORDERED: AtomicU64 = AtomicU64::new(0);

/// How many join trees this process has reordered (the suites check that
/// their reordering pass reorders something).
pub fn reordered_trees() -> u64 {
    REORDERED.load(AtomicOrdering::Relaxed)
}

/// A join this rule may move: inner, on keys that never match NULL.
fn movable(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(j)
        if j.join_type == JoinType::Inner
            && j.null_equality == NullEquality::NullEqualsNothing
            && !j.null_aware)
}

/// A node inside a tree of movable joins: a movable join, or a projection
/// of plain columns between two of them (it only drops columns).
fn inside(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => {
            movable(&p.input) && p.expr.iter().all(|e| matches!(e, Expr::Column(_)))
        }
        other => movable(other),
    }
}

/// Columns of a plan's output that the plans above it read (a superset:
/// every column an expression above names, wherever it is).
type Needed = HashSet<Column>;

/// What each input of `plan` must give, when the plans above `plan` read
/// `needed` of its output.
fn needed_by_inputs(plan: &LogicalPlan, needed: &Needed) -> Vec<Needed> {
    // An alias or a union renames its input's columns, position by position.
    if matches!(plan, LogicalPlan::SubqueryAlias(_) | LogicalPlan::Union(_)) {
        let at: Vec<bool> = plan
            .schema()
            .columns()
            .iter()
            .map(|c| needed.contains(c))
            .collect();
        return plan
            .inputs()
            .iter()
            .map(|input| {
                input
                    .schema()
                    .columns()
                    .into_iter()
                    .zip(&at)
                    .filter(|(_, n)| **n)
                    .map(|(c, _)| c)
                    .collect()
            })
            .collect();
    }
    let mut named = needed.clone();
    for e in plan.expressions() {
        named.extend(e.column_refs().into_iter().cloned());
    }
    plan.inputs()
        .iter()
        .map(|input| {
            let schema = input.schema();
            named
                .iter()
                .filter(|c| schema.has_column(c))
                .cloned()
                .collect()
        })
        .collect()
}

/// Applies `f` to each input of `plan` with what that input must give.
fn map_inputs(
    plan: LogicalPlan,
    needed: &Needed,
    f: fn(LogicalPlan, &Needed) -> Result<Transformed<LogicalPlan>>,
) -> Result<Transformed<LogicalPlan>> {
    let mut each = needed_by_inputs(&plan, needed).into_iter();
    plan.map_children(|child| {
        let needed = each.next().unwrap_or_default();
        f(child, &needed)
    })
}

fn reorder(plan: LogicalPlan, needed: &Needed) -> Result<Transformed<LogicalPlan>> {
    if !movable(&plan) {
        return map_inputs(plan, needed, reorder);
    }
    let mut tree = Tree::default();
    let shape = tree.flatten(&plan);
    if tree.leaves.len() >= 3
        && let Some(estimates) = Estimates::of(&tree, needed)
        && let Some(order) = estimates.choose(&tree)
        && order != shape
        && let (Some(new), Some(old)) =
            (estimates.cost(&tree, &order), estimates.cost(&tree, &shape))
        && {
            tracing::debug!(leaves = tree.leaves.len(), old, new, "join order estimated");
            new * 2.0 < old
        }
    {
        let mut leaves = Vec::with_capacity(tree.leaves.len());
        for leaf in &tree.leaves {
            let all = leaf.schema().columns().into_iter().collect();
            leaves.push(reorder(leaf.clone(), &all)?.data);
        }
        match tree.build(&order, leaves, &plan) {
            Ok(p) => {
                REORDERED.fetch_add(1, AtomicOrdering::Relaxed);
                return Ok(Transformed::yes(p));
            }
            Err(e) => tracing::debug!("join order kept: {e}"),
        }
    }
    descend(plan, needed)
}

/// Recurses into the leaves of a tree of movable joins, keeping the tree.
fn descend(plan: LogicalPlan, needed: &Needed) -> Result<Transformed<LogicalPlan>> {
    if inside(&plan) {
        map_inputs(plan, needed, descend)
    } else {
        reorder(plan, needed)
    }
}

/// The shape of a join tree over leaf numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Leaf(usize),
    Join(Box<Shape>, Box<Shape>),
}

impl Shape {
    fn leaves(&self, out: &mut HashSet<usize>) {
        match self {
            Shape::Leaf(i) => {
                out.insert(*i);
            }
            Shape::Join(l, r) => {
                l.leaves(out);
                r.leaves(out);
            }
        }
    }
}

/// A tree of movable joins taken apart.
#[derive(Default)]
struct Tree {
    leaves: Vec<LogicalPlan>,
    /// Equi-join keys, each side an expression.
    keys: Vec<(Expr, Expr)>,
    /// Other conditions (conjuncts of the joins' filters).
    filters: Vec<Expr>,
}

impl Tree {
    fn flatten(&mut self, plan: &LogicalPlan) -> Shape {
        match plan {
            LogicalPlan::Join(j) if movable(plan) => {
                let l = self.flatten(&j.left);
                let r = self.flatten(&j.right);
                self.keys.extend(j.on.iter().cloned());
                if let Some(f) = &j.filter {
                    self.filters
                        .extend(split_conjunction(f).into_iter().cloned());
                }
                Shape::Join(Box::new(l), Box::new(r))
            }
            LogicalPlan::Projection(p) if inside(plan) => self.flatten(&p.input),
            leaf => {
                self.leaves.push(leaf.clone());
                Shape::Leaf(self.leaves.len() - 1)
            }
        }
    }

    /// The leaves an expression's columns come from; `None` when a column
    /// is in none or in several.
    fn sources(&self, e: &Expr) -> Option<HashSet<usize>> {
        let mut out = HashSet::new();
        for c in e.column_refs() {
            let mut found = self
                .leaves
                .iter()
                .enumerate()
                .filter(|(_, l)| l.schema().has_column(c))
                .map(|(i, _)| i);
            let first = found.next()?;
            if found.next().is_some() {
                return None;
            }
            out.insert(first);
        }
        Some(out)
    }

    /// Builds `order` over `leaves`, each condition at the first join that
    /// has its columns, then projects the columns of `original`.
    fn build(
        &self,
        order: &Shape,
        leaves: Vec<LogicalPlan>,
        original: &LogicalPlan,
    ) -> Result<LogicalPlan> {
        let mut builder = Builder {
            tree: self,
            leaves: leaves.into_iter().map(Some).collect(),
            keys: self
                .keys
                .iter()
                .map(|(a, b)| Ok((self.need(a)?, self.need(b)?)))
                .collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| self.need(f))
                .collect::<Result<_>>()?,
            keys_used: vec![false; self.keys.len()],
            filters_used: vec![false; self.filters.len()],
        };
        let joined = builder.build(order)?;
        if builder
            .keys_used
            .iter()
            .chain(&builder.filters_used)
            .any(|u| !u)
        {
            return Err(DataFusionError::Plan(
                "a join condition found no join".into(),
            ));
        }
        let columns = original
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let plan = LogicalPlan::Projection(Projection::try_new(columns, Arc::new(joined))?);
        if !plan
            .schema()
            .logically_equivalent_names_and_types(original.schema())
        {
            return Err(DataFusionError::Plan("the columns changed".into()));
        }
        Ok(plan)
    }

    fn need(&self, e: &Expr) -> Result<HashSet<usize>> {
        self.sources(e)
            .ok_or_else(|| DataFusionError::Plan(format!("no single input has the columns of {e}")))
    }
}

struct Builder<'a> {
    tree: &'a Tree,
    leaves: Vec<Option<LogicalPlan>>,
    keys: Vec<(HashSet<usize>, HashSet<usize>)>,
    filters: Vec<HashSet<usize>>,
    keys_used: Vec<bool>,
    filters_used: Vec<bool>,
}

impl Builder<'_> {
    fn build(&mut self, shape: &Shape) -> Result<LogicalPlan> {
        let (l, r) = match shape {
            Shape::Leaf(i) => {
                return self.leaves[*i]
                    .take()
                    .ok_or_else(|| DataFusionError::Plan("a leaf used twice".into()));
            }
            Shape::Join(l, r) => (l, r),
        };
        let left = self.build(l)?;
        let right = self.build(r)?;
        let (mut ls, mut rs) = (HashSet::new(), HashSet::new());
        l.leaves(&mut ls);
        r.leaves(&mut rs);
        let both: HashSet<usize> = ls.union(&rs).copied().collect();
        let mut on = Vec::new();
        let mut filters = Vec::new();
        for (k, (a, b)) in self.keys.iter().enumerate() {
            if self.keys_used[k] || !a.is_subset(&both) || !b.is_subset(&both) {
                continue;
            }
            self.keys_used[k] = true;
            let (x, y) = &self.tree.keys[k];
            if !a.is_empty() && !b.is_empty() && a.is_subset(&ls) && b.is_subset(&rs) {
                on.push((x.clone(), y.clone()));
            } else if !a.is_empty() && !b.is_empty() && a.is_subset(&rs) && b.is_subset(&ls) {
                on.push((y.clone(), x.clone()));
            } else {
                filters.push(x.clone().eq(y.clone()));
            }
        }
        for (k, f) in self.filters.iter().enumerate() {
            if !self.filters_used[k] && f.is_subset(&both) {
                self.filters_used[k] = true;
                filters.push(self.tree.filters[k].clone());
            }
        }
        if on.is_empty() {
            return Err(DataFusionError::Plan("a join without keys".into()));
        }
        Ok(LogicalPlan::Join(Join::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            conjunction(filters),
            JoinType::Inner,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?))
    }
}

/// What the rule knows about each leaf.
struct Estimates {
    /// Estimated rows.
    rows: Vec<f64>,
    /// Rows of the table under the leaf before its filters, if one is.
    base: Vec<Option<f64>>,
    /// Column sets that are unique in each leaf.
    keys: Vec<Vec<HashSet<Column>>>,
    /// A stable name for ties.
    names: Vec<String>,
    /// Each key's leaves, per side.
    key_sources: Vec<(HashSet<usize>, HashSet<usize>)>,
    /// Each leaf's columns: the column, its estimated width in bytes, and
    /// whether the plans above the tree read it.
    columns: Vec<Vec<(Column, f64, bool)>>,
    /// Each join condition (key or filter): the leaves it joins and the
    /// columns it reads. A column stays in a join's output while a
    /// condition still to come reads it.
    conditions: Vec<(HashSet<usize>, HashSet<Column>)>,
}

/// The width assumed for a value of variable length (a string, a binary,
/// a list): without per-column sizes, a short text.
const VARIABLE_WIDTH: f64 = 32.0;

/// Estimated bytes of one value of a type in Arrow memory.
fn width(t: &DataType) -> f64 {
    match t {
        DataType::Boolean | DataType::Null => 1.0,
        DataType::Dictionary(key, _) => width(key),
        other => other.primitive_width().map_or(VARIABLE_WIDTH, |w| w as f64),
    }
}

impl Estimates {
    fn of(tree: &Tree, needed: &Needed) -> Option<Self> {
        let rows = tree.leaves.iter().map(rows).collect::<Option<Vec<f64>>>()?;
        let key_sources = tree
            .keys
            .iter()
            .map(|(a, b)| Some((tree.sources(a)?, tree.sources(b)?)))
            .collect::<Option<Vec<_>>>()?;
        let every: HashSet<usize> = (0..tree.leaves.len()).collect();
        let refs = |e: &Expr| -> HashSet<Column> { e.column_refs().into_iter().cloned().collect() };
        let conditions = key_sources
            .iter()
            .zip(&tree.keys)
            .map(|((a, b), (x, y))| {
                (
                    a.union(b).copied().collect(),
                    refs(x).union(&refs(y)).cloned().collect(),
                )
            })
            .chain(
                tree.filters
                    .iter()
                    .map(|f| (tree.sources(f).unwrap_or_else(|| every.clone()), refs(f))),
            )
            .collect();
        let above = |c: &Column| {
            needed.contains(c)
                || needed
                    .iter()
                    .any(|n| n.relation.is_none() && n.name == c.name)
        };
        Some(Self {
            columns: tree
                .leaves
                .iter()
                .map(|l| {
                    l.schema()
                        .iter()
                        .map(|(q, f)| {
                            let c = Column::new(q.cloned(), f.name());
                            let read = above(&c);
                            (c, width(f.data_type()), read)
                        })
                        .collect()
                })
                .collect(),
            conditions,
            rows,
            base: tree.leaves.iter().map(base_rows).collect(),
            keys: tree.leaves.iter().map(unique_keys).collect(),
            names: tree
                .leaves
                .iter()
                .map(|l| l.display().to_string())
                .collect(),
            key_sources,
        })
    }

    /// Estimated bytes of a row of the join of the leaves `set`: the
    /// columns the plans above read and those a condition joining a leaf
    /// outside `set` still needs.
    fn width(&self, set: &HashSet<usize>) -> f64 {
        let kept = |c: &Column| {
            self.conditions
                .iter()
                .any(|(leaves, cols)| cols.contains(c) && !leaves.is_subset(set))
        };
        set.iter()
            .flat_map(|&i| &self.columns[i])
            .filter(|(c, _, above)| *above || kept(c))
            .map(|(_, w, _)| w)
            .sum::<f64>()
            .max(1.0)
    }

    /// The cheapest of the greedy orders from each leaf that joins
    /// anything, or `None` when the leaves do not all connect through keys.
    fn choose(&self, tree: &Tree) -> Option<Shape> {
        let n = self.rows.len();
        let connects = |i: usize, j: usize| {
            self.key_sources.iter().any(|(a, b)| {
                (a.len() == 1 && b.len() == 1)
                    && ((a.contains(&i) && b.contains(&j)) || (a.contains(&j) && b.contains(&i)))
            })
        };
        (0..n)
            .filter(|&i| (0..n).any(|j| j != i && connects(i, j)))
            .filter_map(|start| {
                let shape = self.greedy(tree, start)?;
                Some((self.cost(tree, &shape)?, start, shape))
            })
            .min_by(|(ca, a, _), (cb, b, _)| {
                ca.total_cmp(cb)
                    .then_with(|| self.rank(*a, self.rows[*a], *b, self.rows[*b]))
            })
            .map(|(_, _, shape)| shape)
    }

    /// The order that starts from leaf `start` and adds, one at a time, the
    /// connected leaf that gives the fewest estimated bytes.
    fn greedy(&self, tree: &Tree, start: usize) -> Option<Shape> {
        let n = self.rows.len();
        let mut set = HashSet::from([start]);
        let mut shape = Shape::Leaf(start);
        let mut size = self.rows[start];
        while set.len() < n {
            let bytes = |i: usize, rows: f64| {
                let mut with = set.clone();
                with.insert(i);
                rows * self.width(&with)
            };
            // A join on a whole key first: without distinct counts, a join
            // on other columns (suppliers and customers of a nation) can
            // grow far beyond any estimate.
            let (next, (_, next_size)) = (0..n)
                .filter(|i| !set.contains(i))
                .filter_map(|i| Some((i, self.join_size(tree, &set, size, i)?)))
                .min_by(|&(a, (ka, sa)), &(b, (kb, sb))| {
                    kb.cmp(&ka)
                        .then_with(|| self.rank(a, bytes(a, sa), b, bytes(b, sb)))
                })?;
            shape = if self.rows[next] < size {
                Shape::Join(Box::new(Shape::Leaf(next)), Box::new(shape))
            } else {
                Shape::Join(Box::new(shape), Box::new(Shape::Leaf(next)))
            };
            set.insert(next);
            size = next_size;
        }
        Some(shape)
    }

    /// The estimated cost of a join tree in which every join has a leaf on
    /// one side: the bytes of the intermediate results its joins put out
    /// (the last join's output, the tree's result, is the same in every
    /// order). `None` for other trees, or a join without an equi-join
    /// condition.
    fn cost(&self, tree: &Tree, shape: &Shape) -> Option<f64> {
        /// Rows out, cost so far, and the bytes of the last join.
        fn walk(
            e: &Estimates,
            tree: &Tree,
            shape: &Shape,
            set: &mut HashSet<usize>,
        ) -> Option<(f64, f64, f64)> {
            match shape {
                Shape::Leaf(i) => {
                    set.insert(*i);
                    Some((e.rows[*i], 0.0, 0.0))
                }
                Shape::Join(l, r) => {
                    let (leaf, other) = match (l.as_ref(), r.as_ref()) {
                        (Shape::Leaf(i), other) | (other, Shape::Leaf(i)) => (*i, other),
                        _ => return None,
                    };
                    let (size, cost, _) = walk(e, tree, other, set)?;
                    let (_, out) = e.join_size(tree, set, size, leaf)?;
                    set.insert(leaf);
                    let bytes = out * e.width(set);
                    Some((out, cost + bytes, bytes))
                }
            }
        }
        walk(self, tree, shape, &mut HashSet::new()).map(|(_, cost, last)| cost - last)
    }

    fn rank(&self, a: usize, sa: f64, b: usize, sb: f64) -> std::cmp::Ordering {
        sa.total_cmp(&sb)
            .then_with(|| self.rows[a].total_cmp(&self.rows[b]))
            .then_with(|| self.names[a].cmp(&self.names[b]))
            .then_with(|| a.cmp(&b))
    }

    /// Whether joining the leaves `set` (`size` rows) with leaf `leaf` is
    /// on a whole unique key of either side, and its estimated rows; `None`
    /// when no equi-join condition joins them.
    fn join_size(
        &self,
        tree: &Tree,
        set: &HashSet<usize>,
        size: f64,
        leaf: usize,
    ) -> Option<(bool, f64)> {
        let just = HashSet::from([leaf]);
        let mut set_cols: Vec<(usize, Column)> = Vec::new();
        let mut leaf_cols: HashSet<Column> = HashSet::new();
        let mut any = false;
        for ((a, b), (x, y)) in self.key_sources.iter().zip(&tree.keys) {
            let (s_side, l_side) = if a.is_subset(set) && !a.is_empty() && *b == just {
                (x, y)
            } else if b.is_subset(set) && !b.is_empty() && *a == just {
                (y, x)
            } else {
                continue;
            };
            any = true;
            if let Expr::Column(c) = l_side {
                leaf_cols.insert(c.clone());
            }
            if let Expr::Column(c) = s_side
                && let Some(src) = tree.sources(s_side)
                && src.len() == 1
            {
                set_cols.extend(src.into_iter().map(|i| (i, c.clone())));
            }
        }
        if !any {
            return None;
        }
        let rows = self.rows[leaf];
        let fraction = |i: usize, r: f64| match self.base[i] {
            Some(b) if b > 0.0 => r / b,
            _ => 1.0,
        };
        // The leaf's whole key: each row of the set meets at most one of
        // its rows, if that row survived the leaf's filters.
        if self.keys[leaf].iter().any(|k| k.is_subset(&leaf_cols)) {
            return Some((true, (size * fraction(leaf, rows)).min(size * rows)));
        }
        // A key of a leaf in the set: each row of the leaf meets the rows
        // of the set that carry that key.
        for &i in set {
            let cols: HashSet<Column> = set_cols
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, c)| c.clone())
                .collect();
            if self.keys[i].iter().any(|k| k.is_subset(&cols)) {
                let per_key = match self.base[i] {
                    Some(b) if b > 0.0 => size / b,
                    _ => 1.0,
                };
                return Some((true, (rows * per_key).min(size * rows)));
            }
        }
        Some((false, size.max(rows)))
    }
}

/// The column sets of a plan's output that are unique (its functional
/// dependencies that determine every column).
fn unique_keys(plan: &LogicalPlan) -> Vec<HashSet<Column>> {
    let schema = plan.schema();
    let columns = schema.columns();
    schema
        .functional_dependencies()
        .iter()
        .filter(|d| d.target_indices.len() == columns.len() && !d.source_indices.is_empty())
        .filter_map(|d| {
            d.source_indices
                .iter()
                .map(|&i| columns.get(i).cloned())
                .collect::<Option<HashSet<Column>>>()
        })
        .collect()
}

/// A policy barrier whose row filters hide rows from this principal. The
/// table's total would tell how many (`meta.tables` withholds it for the
/// same reason), and a join order chosen from it could be seen in `EXPLAIN`:
/// such a leaf's size is unknown.
fn hides_rows(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Extension(ext)
        if ext
            .node
            .as_any()
            .downcast_ref::<PolicyBarrier>()
            .is_some_and(|b| b.applied.iter().any(|a| a.starts_with("filter:"))))
}

/// The rows of the table a leaf reads, before filters.
fn base_rows(plan: &LogicalPlan) -> Option<f64> {
    if hides_rows(plan) {
        return None;
    }
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            provider
                .statistics()?
                .num_rows
                .get_value()
                .map(|&n| n as f64)
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Projection(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Extension(_) => match plan.inputs().as_slice() {
            [one] => base_rows(one),
            _ => None,
        },
        // A semi or anti join keeps rows of one side only.
        LogicalPlan::Join(j) => match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => base_rows(&j.left),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => base_rows(&j.right),
            _ => None,
        },
        _ => None,
    }
}

/// The share of a semi join's kept side that finds a match on the other
/// side `other`, joined on `keys` of it: the share of `other`'s table
/// left after its filters when the keys hold a whole unique key of
/// `other` (TPC-H q5's `nation` semi-joined with the one `region` named),
/// else all of it.
fn matched_share(other: &LogicalPlan, keys: &[&Expr]) -> f64 {
    let cols: HashSet<Column> = keys
        .iter()
        .filter_map(|k| match k {
            Expr::Column(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    if !unique_keys(other).iter().any(|k| k.is_subset(&cols)) {
        return 1.0;
    }
    match (rows(other), base_rows(other)) {
        (Some(r), Some(b)) if b > 0.0 => (r / b).min(1.0),
        _ => 1.0,
    }
}

/// Estimated rows of a plan; `None` when unknown.
fn rows(plan: &LogicalPlan) -> Option<f64> {
    if hides_rows(plan) {
        return None;
    }
    match plan {
        LogicalPlan::TableScan(scan) => {
            let n = base_rows(plan)?;
            Some(match scan.fetch {
                Some(f) => n.min(f as f64),
                None => n,
            })
        }
        LogicalPlan::Filter(Filter {
            predicate, input, ..
        }) => {
            let n = rows(input)?;
            Some(n * selectivity(predicate, input, n))
        }
        LogicalPlan::Aggregate(a) => {
            if a.group_expr.is_empty() {
                Some(1.0)
            } else {
                rows(&a.input)
            }
        }
        LogicalPlan::Limit(l) => {
            let n = rows(&l.input)?;
            match l.get_fetch_type() {
                Ok(datafusion::logical_expr::FetchType::Literal(Some(f))) => Some(n.min(f as f64)),
                _ => Some(n),
            }
        }
        LogicalPlan::Join(j) => {
            let (l, r) = (rows(&j.left)?, rows(&j.right)?);
            let left_keys: Vec<&Expr> = j.on.iter().map(|(a, _)| a).collect();
            let right_keys: Vec<&Expr> = j.on.iter().map(|(_, b)| b).collect();
            Some(match j.join_type {
                JoinType::LeftSemi => l * matched_share(&j.right, &right_keys),
                JoinType::RightSemi => r * matched_share(&j.left, &left_keys),
                JoinType::LeftAnti | JoinType::LeftMark => l,
                JoinType::RightAnti | JoinType::RightMark => r,
                _ => l.max(r),
            })
        }
        LogicalPlan::Union(u) => u.inputs.iter().map(|i| rows(i)).sum(),
        LogicalPlan::Values(v) => Some(v.values.len() as f64),
        LogicalPlan::EmptyRelation(e) => Some(if e.produce_one_row { 1.0 } else { 0.0 }),
        LogicalPlan::Projection(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Extension(_) => match plan.inputs().as_slice() {
            [one] => rows(one),
            _ => None,
        },
        _ => None,
    }
}

/// Fixed selectivities, in the manner of System R: an equality 1/10 (one
/// row for a unique column), a range 1/3 (1/4 for both bounds of a
/// column), `IN` 1/10 per value, `LIKE` 1/10.
fn selectivity(predicate: &Expr, input: &LogicalPlan, rows: f64) -> f64 {
    let conjuncts = split_conjunction(predicate);
    let mut bounded: Vec<(&Column, bool)> = Vec::new();
    let mut s = 1.0;
    for c in conjuncts {
        match range_bound(c) {
            Some((col, lower)) => bounded.push((col, lower)),
            None => s *= one(c, input, rows),
        }
    }
    let mut seen: Vec<&Column> = Vec::new();
    for (col, _) in &bounded {
        if seen.contains(col) {
            continue;
        }
        seen.push(col);
        let lower = bounded.iter().any(|(c, l)| c == col && *l);
        let upper = bounded.iter().any(|(c, l)| c == col && !*l);
        s *= if lower && upper { 0.25 } else { 1.0 / 3.0 };
    }
    s
}

/// A column compared with a literal by `<`, `<=`, `>` or `>=`: the column,
/// and whether it is a lower bound.
fn range_bound(e: &Expr) -> Option<(&Column, bool)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let lower = match op {
        Operator::Gt | Operator::GtEq => true,
        Operator::Lt | Operator::LtEq => false,
        _ => return None,
    };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(..)) => Some((c, lower)),
        (Expr::Literal(..), Expr::Column(c)) => Some((c, !lower)),
        _ => None,
    }
}

fn one(e: &Expr, input: &LogicalPlan, rows: f64) -> f64 {
    const EQ: f64 = 0.1;
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => one(left, input, rows) * one(right, input, rows),
            Operator::Or => {
                let (a, b) = (one(left, input, rows), one(right, input, rows));
                (a + b - a * b).min(1.0)
            }
            Operator::Eq => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(..)) | (Expr::Literal(..), Expr::Column(c))
                    if rows >= 1.0
                        && unique_keys(input)
                            .iter()
                            .any(|k| k.len() == 1 && k.contains(c)) =>
                {
                    1.0 / rows
                }
                _ => EQ,
            },
            Operator::NotEq => 1.0 - EQ,
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => 1.0 / 3.0,
            _ => 0.5,
        },
        Expr::Between(Between { negated, .. }) => {
            if *negated {
                0.75
            } else {
                0.25
            }
        }
        Expr::InList(InList { list, negated, .. }) => {
            let s = (list.len() as f64 * EQ).min(0.5);
            if *negated { 1.0 - s } else { s }
        }
        Expr::Like(Like { negated, .. }) => {
            if *negated {
                1.0 - EQ
            } else {
                EQ
            }
        }
        Expr::Not(inner) => 1.0 - one(inner, input, rows),
        Expr::IsNull(_) => EQ,
        Expr::IsNotNull(_) => 1.0 - EQ,
        Expr::Literal(ScalarValue::Boolean(Some(false)), _) => 0.0,
        Expr::Literal(ScalarValue::Boolean(Some(true)), _) => 1.0,
        _ => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use async_trait::async_trait;
    use datafusion::catalog::{Session, TableProvider};
    use datafusion::common::stats::Precision;
    use datafusion::common::{ColumnStatistics, Constraint, Constraints, Statistics};
    use datafusion::datasource::{MemTable, TableType};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::optimizer::Optimizer;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A memory table that states a row count (of the table it stands
    /// for) and, optionally, a primary key on its first column.
    #[derive(Debug)]
    struct Stated {
        inner: MemTable,
        rows: Option<usize>,
        key: Option<Constraints>,
    }

    #[async_trait]
    impl TableProvider for Stated {
        fn schema(&self) -> SchemaRef {
            self.inner.schema()
        }
        fn table_type(&self) -> TableType {
            TableType::Base
        }
        fn constraints(&self) -> Option<&Constraints> {
            self.key.as_ref()
        }
        fn statistics(&self) -> Option<Statistics> {
            Some(Statistics {
                num_rows: Precision::Inexact(self.rows?),
                total_byte_size: Precision::Absent,
                column_statistics: vec![
                    ColumnStatistics::new_unknown();
                    self.inner.schema().fields().len()
                ],
            })
        }
        async fn scan(
            &self,
            state: &dyn Session,
            projection: Option<&Vec<usize>>,
            filters: &[Expr],
            limit: Option<usize>,
        ) -> Result<Arc<dyn ExecutionPlan>> {
            self.inner.scan(state, projection, filters, limit).await
        }
    }

    /// `big(id, mid_id)` stated as 1,000,000 rows, `mid(id, small_id)` as
    /// 10,000 and `small(id, name)` as 100, keyed by `id` when `keyed`;
    /// each holds a few rows that join.
    fn context(reorder: bool, stated: bool, keyed: bool) -> SessionContext {
        let mut rules = Optimizer::new().rules;
        rules.push(Arc::new(ReorderJoins));
        let mut config = SessionConfig::new().with_option_extension(PlanOptions::default());
        config
            .options_mut()
            .set("meshq_plan.reorder_joins", &reorder.to_string())
            .unwrap();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let int = |name: &str| Field::new(name, DataType::Int64, false);
        let table = |name: &str, second: Field, rows: usize, values: Vec<RecordBatch>| {
            let schema = Arc::new(Schema::new(vec![int("id"), second]));
            let batches = values
                .into_iter()
                .map(|b| RecordBatch::try_new(Arc::clone(&schema), b.columns().to_vec()).unwrap())
                .collect();
            let provider = Stated {
                inner: MemTable::try_new(schema, vec![batches]).unwrap(),
                rows: stated.then_some(rows),
                key: keyed
                    .then(|| Constraints::new_unverified(vec![Constraint::PrimaryKey(vec![0])])),
            };
            ctx.register_table(name, Arc::new(provider)).unwrap();
        };
        let ints = |a: Vec<i64>, b: Vec<i64>| {
            RecordBatch::try_from_iter(vec![
                ("id", Arc::new(Int64Array::from(a)) as _),
                ("x", Arc::new(Int64Array::from(b)) as _),
            ])
            .unwrap()
        };
        table(
            "big",
            int("mid_id"),
            1_000_000,
            vec![ints(vec![1, 2, 3, 4], vec![10, 10, 20, 30])],
        );
        table(
            "mid",
            int("small_id"),
            10_000,
            vec![ints(vec![10, 20, 30], vec![100, 200, 200])],
        );
        let small = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![100, 200])) as _),
            ("name", Arc::new(StringArray::from(vec!["x", "y"])) as _),
        ])
        .unwrap();
        table(
            "small",
            Field::new("name", DataType::Utf8, false),
            100,
            vec![small],
        );
        ctx
    }

    const QUERY: &str = "SELECT big.id, mid.id AS mid, small.name FROM big, mid, small \
         WHERE big.mid_id = mid.id AND mid.small_id = small.id AND small.name = 'y' \
         ORDER BY big.id";

    /// The tables of the innermost join of the optimized plan, in order.
    async fn first_join(ctx: &SessionContext) -> Vec<String> {
        first_join_of(ctx, QUERY).await
    }

    async fn first_join_of(ctx: &SessionContext, query: &str) -> Vec<String> {
        let plan = ctx.sql(query).await.unwrap().into_optimized_plan().unwrap();
        let mut deepest = None;
        plan.apply(|p| {
            if let LogicalPlan::Join(j) = p {
                deepest = Some(j.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        let j = deepest.expect("a join");
        [&j.left, &j.right]
            .iter()
            .map(|side| {
                let mut name = String::new();
                side.apply(|p| {
                    if let LogicalPlan::TableScan(s) = p {
                        name = s.table_name.to_string();
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })
                .unwrap();
                name
            })
            .collect()
    }

    async fn answer(ctx: &SessionContext) -> Vec<String> {
        answer_of(ctx, QUERY).await
    }

    async fn answer_of(ctx: &SessionContext, query: &str) -> Vec<String> {
        let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn the_selective_small_tables_are_joined_first() {
        // As written, `big` joins `mid` first: a million rows.
        assert_eq!(
            first_join(&context(false, true, true)).await,
            ["big", "mid"]
        );
        // Ordered: the filtered `small` (about 10 rows) with `mid`, whose
        // key it joins, smaller side on the left.
        assert_eq!(
            first_join(&context(true, true, true)).await,
            ["small", "mid"]
        );
        let expected = answer(&context(false, true, true)).await;
        assert_eq!(answer(&context(true, true, true)).await, expected);
        assert!(
            expected.iter().any(|l| l.contains("| 3  | 20  | y    |")),
            "{expected:?}"
        );
        assert_eq!(expected.len(), 6, "{expected:?}");
    }

    #[tokio::test]
    async fn without_row_counts_the_written_order_stays() {
        assert_eq!(
            first_join(&context(true, false, true)).await,
            ["big", "mid"]
        );
    }

    /// A condition over two inputs that is no equi-join key (TPC-H q7's
    /// `(n1 = … AND n2 = …) OR (…)`) and a fourth input: the condition is
    /// evaluated where both inputs have joined, and the answers stay.
    #[tokio::test]
    async fn conditions_across_inputs_follow_the_new_order() {
        let query = "SELECT big.id, s1.name, s2.name AS other FROM big, mid, small s1, small s2 \
             WHERE big.mid_id = mid.id AND mid.small_id = s1.id AND s2.id = s1.id \
             AND (s1.name = 'y' AND s2.name = 'y' OR s1.name = 'z' AND s2.name = 'x') \
             ORDER BY big.id";
        let off = context(false, true, true);
        let on = context(true, true, true);
        assert_eq!(first_join_of(&off, query).await, ["big", "mid"]);
        assert_ne!(first_join_of(&on, query).await, ["big", "mid"]);
        let expected = answer_of(&off, query).await;
        assert_eq!(answer_of(&on, query).await, expected);
        // Orders 3 and 4 belong to the `y` row of `small` through `mid`.
        assert_eq!(expected.len(), 6, "{expected:?}");
    }

    /// A stated table keyed by its first column, holding `batch`.
    fn register(ctx: &SessionContext, name: &str, batch: RecordBatch, rows: usize) {
        let provider = Stated {
            inner: MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap(),
            rows: Some(rows),
            key: Some(Constraints::new_unverified(vec![Constraint::PrimaryKey(
                vec![0],
            )])),
        };
        ctx.register_table(name, Arc::new(provider)).unwrap();
    }

    /// TPC-H q10's shape: a wide table (`customer`, four text columns the
    /// query returns) written first, joined on its key with a filtered
    /// `orders`, then with a filtered `lineitem` on the key of `orders`.
    /// Counted in rows the two orders cost the same; counted in bytes,
    /// joining `orders` with `lineitem` first carries two narrow columns
    /// where the written order carries every text column of `customer`.
    #[tokio::test]
    async fn narrow_joins_come_before_a_wide_table() {
        let ctx = |reorder: bool| {
            let ctx = context(reorder, true, true);
            let ints = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as _;
            let texts = |v: Vec<&str>| Arc::new(StringArray::from(v)) as _;
            register(
                &ctx,
                "customer",
                RecordBatch::try_from_iter(vec![
                    ("c_custkey", ints(vec![1, 2])),
                    ("c_name", texts(vec!["ann", "bob"])),
                    ("c_address", texts(vec!["a st", "b st"])),
                    ("c_phone", texts(vec!["1", "2"])),
                    ("c_comment", texts(vec!["x", "y"])),
                ])
                .unwrap(),
                1_500_000,
            );
            register(
                &ctx,
                "orders",
                RecordBatch::try_from_iter(vec![
                    ("o_orderkey", ints(vec![10, 11, 12])),
                    ("o_custkey", ints(vec![1, 2, 2])),
                    ("o_orderdate", ints(vec![5, 5, 9])),
                ])
                .unwrap(),
                15_000_000,
            );
            register(
                &ctx,
                "lineitem",
                RecordBatch::try_from_iter(vec![
                    ("l_linekey", ints(vec![100, 101, 102, 103])),
                    ("l_orderkey", ints(vec![10, 11, 11, 12])),
                    ("l_price", ints(vec![3, 4, 5, 6])),
                    ("l_flag", texts(vec!["R", "R", "N", "R"])),
                ])
                .unwrap(),
                60_000_000,
            );
            ctx
        };
        let query = "SELECT c_custkey, c_name, c_address, c_phone, c_comment, \
             sum(l_price) AS revenue FROM customer, orders, lineitem \
             WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
             AND o_orderdate >= 4 AND o_orderdate < 6 AND l_flag = 'R' \
             GROUP BY c_custkey, c_name, c_address, c_phone, c_comment ORDER BY c_custkey";
        let first = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };
        assert_eq!(
            first(first_join_of(&ctx(false), query).await),
            ["customer", "orders"]
        );
        assert_eq!(
            first(first_join_of(&ctx(true), query).await),
            ["lineitem", "orders"]
        );
        let expected = answer_of(&ctx(false), query).await;
        assert_eq!(answer_of(&ctx(true), query).await, expected);
        // Customer 1's order 10 (3) and customer 2's order 11 (4).
        assert!(expected.iter().any(|l| l.contains("| 3 ")), "{expected:?}");
        assert!(expected.iter().any(|l| l.contains("| 4 ")), "{expected:?}");
        assert_eq!(expected.len(), 6, "{expected:?}");
    }

    /// The last node of `plan` (in pre-order) that `pick` picks.
    fn find(plan: &LogicalPlan, pick: impl Fn(&LogicalPlan) -> bool) -> Option<LogicalPlan> {
        let mut found = None;
        plan.apply(|p| {
            if pick(p) {
                found = Some(p.clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    /// An alias renames its input's columns: what is read of the alias is
    /// read of the input, by position.
    #[tokio::test]
    async fn an_alias_passes_on_what_is_read_of_it() {
        let ctx = context(true, true, true);
        let plan = ctx
            .sql("SELECT s.name FROM small AS s")
            .await
            .unwrap()
            .into_unoptimized_plan();
        let alias = find(&plan, |p| matches!(p, LogicalPlan::SubqueryAlias(_))).expect("an alias");
        let needed = HashSet::from([Column::new(Some("s"), "name")]);
        assert_eq!(
            needed_by_inputs(&alias, &needed),
            [HashSet::from([Column::new(Some("small"), "name")])]
        );
    }

    /// A semi join keeps the share of its side whose key finds a row on
    /// the other side; on that side's whole key, the share of it its
    /// filters leave (`small`: 10 of 100 rows).
    #[tokio::test]
    async fn a_semi_join_keeps_the_share_its_filtered_side_matches() {
        let ctx = context(false, true, true);
        let plan = ctx
            .sql("SELECT mid.id FROM mid WHERE mid.small_id IN (SELECT id FROM small WHERE name = 'y')")
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap();
        let semi = find(
            &plan,
            |p| matches!(p, LogicalPlan::Join(j) if j.join_type == JoinType::LeftSemi),
        )
        .expect("a semi join");
        assert_eq!(rows(&semi), Some(1000.0));
        assert_eq!(base_rows(&semi), Some(10_000.0));
    }
}
