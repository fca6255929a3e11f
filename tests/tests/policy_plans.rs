//! Where each kind of user predicate ends up in the plan of a governed
//! table: below the policy barrier (pruning works) only when it is
//! leakproof and reads unmasked columns; above it otherwise, evaluated only
//! on what the policy let through. Run as `ana`, for whom
//! `customers.profiles` masks customer_id, full_name, email, phone and
//! signup_date, keeps country, region and tier, and filters to EMEA.

use crate::common::session_as;

/// The optimized logical plan of `sql` run as `who`, indented.
async fn plan_of(who: &str, sql: &str) -> String {
    let session = session_as(who).await;
    let plan = session
        .sql(sql)
        .await
        .unwrap()
        .into_optimized_plan()
        .unwrap();
    plan.display_indent().to_string()
}

/// The optimized logical plan's `Filter:` lines above and below the
/// barrier.
async fn filters(sql: &str) -> (Vec<String>, Vec<String>) {
    let text = plan_of("ana", sql).await;
    let barrier = text
        .lines()
        .position(|l| l.trim_start().starts_with("PolicyBarrier:"))
        .unwrap_or_else(|| panic!("no barrier in\n{text}"));
    let mut above = Vec::new();
    let mut below = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("Filter:") || line.starts_with("TableScan:") {
            if i < barrier {
                above.push(line.to_string());
            } else {
                below.push(line.to_string());
            }
        }
    }
    (above, below)
}

#[tokio::test]
async fn user_predicates_cross_the_barrier_only_when_leakproof() {
    // (predicate, a literal only it mentions, whether it moves below)
    let cases = [
        ("tier = 'gold1'", "gold1", true),
        ("'gold2' = tier", "gold2", true),
        ("tier IN ('gold3', 'silver3')", "gold3", true),
        ("tier LIKE 'gold4%'", "gold4", true),
        ("tier BETWEEN 'a5' AND 'm5'", "a5", true),
        ("NOT (tier = 'gold6')", "gold6", true),
        ("tier = 'gold7' OR country = 'DE7'", "DE7", true),
        // Masked columns: the predicate sees the masked value, above.
        ("email = 'x8@example.com'", "x8@example.com", false),
        ("customer_id IN ('C9', 'C10')", "C9", false),
        ("signup_date > DATE '2025-01-11'", "2025-01-11", false),
        ("tier = 'gold12' OR email = 'e12'", "gold12", false),
        // What can fail or call a function stays above.
        ("upper(tier) = 'GOLD13'", "GOLD13", false),
        ("length(tier) > 14", "14", false),
        ("CAST(tier AS INT) = 15", "15", false),
        ("tier || 'x' = 'gold16x'", "gold16x", false),
        // Two columns compared: DESIGN allows a literal only.
        (
            "tier = country AND region = 'EMEA17'",
            "tier = customers.profiles.country",
            false,
        ),
    ];
    for (predicate, marker, moves) in cases {
        let (above, below) = filters(&format!(
            "SELECT country FROM customers.profiles WHERE {predicate}"
        ))
        .await;
        let in_above = above.iter().any(|l| l.contains(marker));
        let in_below = below.iter().any(|l| l.contains(marker));
        assert_eq!(
            (in_above, in_below),
            (!moves, moves),
            "{predicate}\nabove: {above:#?}\nbelow: {below:#?}"
        );
    }
}

/// The policy rewrite itself: the row filter is below the barrier, masks
/// are applied in the barrier's projection, and a column no policy touches
/// is passed through.
#[tokio::test]
async fn the_rewrite_puts_filters_and_masks_under_the_barrier() {
    let plan = plan_of("ana", "SELECT email, tier FROM customers.profiles").await;
    let lines: Vec<&str> = plan.lines().map(str::trim_start).collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{plan}"))
    };
    let barrier = at("PolicyBarrier:");
    let projection = lines
        .iter()
        .skip(barrier)
        .position(|l| l.starts_with("Projection:"))
        .map(|i| i + barrier)
        .unwrap_or_else(|| panic!("no masking projection in\n{plan}"));
    let filter = at("Filter:");
    assert!(
        barrier < projection && projection < filter,
        "barrier, masks, then the row filter:\n{plan}"
    );
    assert!(lines[barrier].contains("email:hash"), "{plan}");
    assert!(lines[barrier].contains("filter:own_region"), "{plan}");
    assert!(
        lines[projection].contains("mask_hash(customers.profiles.email) AS email"),
        "{plan}"
    );
    assert!(
        lines[projection].contains("customers.profiles.tier"),
        "{plan}"
    );
    assert!(
        !lines[projection].contains("mask_hash(customers.profiles.tier)"),
        "{plan}"
    );
    assert!(lines[filter].contains("region"), "{plan}");
    // pat reads raw values: no barrier at all.
    let raw = plan_of("pat", "SELECT email FROM sales.orders").await;
    assert!(!raw.contains("mask_hash"), "{raw}");
}
