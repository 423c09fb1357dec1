//! Random INSERT statements for the property tests of the two fast INSERT readers (`insert`
//! from tokens, `scan` from text), made of pieces each test picks.

use proptest::prelude::*;

/// Statements made of `names` (namespace, table, columns), `values` (1 to 3 rows of 1 to 3),
/// `gaps` (between tokens, 16 drawn per statement) and one of `tails` after the rows.
pub(super) fn insert_statement(
    names: &'static [&'static str],
    values: &'static [&'static str],
    gaps: &'static [&'static str],
    tails: &'static [&'static str],
) -> impl Strategy<Value = String> {
    let name = prop::sample::select(names);
    let value = prop::sample::select(values);
    let gap = prop::sample::select(gaps);
    (
        prop::option::of(name.clone()),
        name.clone(),
        prop::option::of(prop::collection::vec(name, 1..4)),
        prop::collection::vec(prop::collection::vec(value, 1..4), 1..4),
        prop::collection::vec(gap, 16),
        prop::sample::select(tails),
    )
        .prop_map(|(ns, table, columns, rows, gaps, tail)| {
            let g = |i: usize| gaps[i % gaps.len()];
            let mut sql = format!("{}INSERT{}INTO ", g(15), if g(0).is_empty() { " " } else { g(0) });
            if let Some(ns) = ns {
                sql.push_str(&format!("{ns}{}.{}", g(1), g(2)));
            }
            sql.push_str(table);
            if let Some(columns) = columns {
                sql.push_str(&format!("{}({})", g(3), columns.join(&format!(",{}", g(4)))));
            }
            sql.push_str(" VALUES");
            let rows: Vec<String> = rows
                .iter()
                .enumerate()
                .map(|(i, r)| format!("{}({}){}", g(5 + i), r.join(&format!("{},", g(12))), g(9 + i)))
                .collect();
            sql.push_str(&rows.join(","));
            sql.push_str(tail);
            sql.push_str(g(13));
            sql
        })
}
