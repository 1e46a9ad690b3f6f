//! Save the hypervisor's network state to a directory and later show what changed.
//!
//! An operator runs `pathtrace doctor --snapshot DIR` before a change and
//! `pathtrace doctor --diff DIR` after it. Every source is read in the current
//! network namespace (netlink through iproute2, and /proc/sys/net, which is per
//! namespace of the reader), because pathtrace runs inside the hypervisor's
//! namespace; /sys/class/net would show the root namespace under `nsenter --net`.
//!
//! Each source is normalised into lines that carry their own context, with
//! counters, timers and other churn removed, so the diff shows configuration
//! changes rather than traffic.

use std::collections::HashMap;

// ---------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------

/// More edits than this in one file and the order-aware diff would need too
/// much memory (it grows with the square); such files are compared as multisets.
const MAX_ORDERED_EDITS: usize = 2000;

/// Lines added and removed between two normalised texts, each in the order it
/// appears. Lines are matched by a longest common subsequence, so a rule that
/// moved shows as removed and added; repeated lines count as often as they occur.
pub fn diff_texts(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Most diffs are a few lines in a long file: skip the common ends cheaply.
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let (keep_a, keep_b) = myers(a, b, MAX_ORDERED_EDITS).unwrap_or_else(|| multiset_common(a, b));
    let unkept = |lines: &[&str], keep: &[bool]| -> Vec<String> {
        lines
            .iter()
            .zip(keep)
            .filter(|(_, k)| !**k)
            .map(|(l, _)| l.to_string())
            .collect()
    };
    (unkept(b, &keep_b), unkept(a, &keep_a))
}

/// Which lines of `a` and `b` belong to a longest common subsequence (Myers'
/// O((N+M)·D) algorithm), or None if more than `max_edits` edits are needed.
fn myers(a: &[&str], b: &[&str], max_edits: usize) -> Option<(Vec<bool>, Vec<bool>)> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let limit = (a.len() + b.len()).min(max_edits) as isize;
    // v[k + off] = furthest x reached on diagonal k = x - y.
    let off = limit + 1;
    let mut v = vec![0isize; (2 * limit + 3) as usize];
    // trace[d] = v for diagonals -d..=d before step d, to walk back the path.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=limit {
        trace.push(v[(off - d) as usize..=(off + d) as usize].to_vec());
        for k in (-d..=d).step_by(2) {
            let down = k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]);
            let mut x = if down {
                v[(off + k + 1) as usize]
            } else {
                v[(off + k - 1) as usize] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[(off + k) as usize] = x;
            if x >= n && y >= m {
                return Some(walk_back(&trace, n, m));
            }
        }
    }
    None
}

/// Follow the Myers path backwards from (n, m), marking the diagonal moves.
fn walk_back(trace: &[Vec<isize>], n: isize, m: isize) -> (Vec<bool>, Vec<bool>) {
    let mut keep_a = vec![false; n as usize];
    let mut keep_b = vec![false; m as usize];
    let (mut x, mut y) = (n, m);
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let at = |k: isize| v[(k + d) as usize];
        let k = x - y;
        let prev_k = if k == -d || (k != d && at(k - 1) < at(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let (prev_x, prev_y) = if d == 0 {
            (0, 0)
        } else {
            (at(prev_k), at(prev_k) - prev_k)
        };
        while x > prev_x && y > prev_y {
            x -= 1;
            y -= 1;
            keep_a[x as usize] = true;
            keep_b[y as usize] = true;
        }
        x = prev_x;
        y = prev_y;
    }
    (keep_a, keep_b)
}

/// Order-blind fallback: a line is kept as many times as it occurs on both sides.
fn multiset_common(a: &[&str], b: &[&str]) -> (Vec<bool>, Vec<bool>) {
    (kept_by_count(a, b), kept_by_count(b, a))
}

/// For each line of `lines`, whether `other` still has an unmatched copy of it.
fn kept_by_count(lines: &[&str], other: &[&str]) -> Vec<bool> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for l in other {
        *left.entry(l).or_default() += 1;
    }
    lines
        .iter()
        .map(|l| match left.get_mut(l) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn diff_texts_shows_additions_removals_and_moves() {
        let old = "a\nb\nc\n";
        assert_eq!(diff_texts(old, old), (vec![], vec![]));
        assert_eq!(diff_texts(old, "a\nb\nx\nc\n"), (vec!["x".into()], vec![]));
        assert_eq!(diff_texts(old, "a\nc\n"), (vec![], vec!["b".into()]));
        // A rule moved above another changes what matches first.
        let (added, removed) = diff_texts(old, "b\na\nc\n");
        assert_eq!((added.len(), removed.len()), (1, 1));
        assert_eq!(added, removed);
        // A duplicated rule is a change too.
        assert_eq!(diff_texts(old, "a\nb\nb\nc\n"), (vec!["b".into()], vec![]));
        assert_eq!(diff_texts("", "a\n"), (vec!["a".into()], vec![]));
    }

    #[test]
    fn diff_texts_lists_lines_in_file_order() {
        let (added, removed) = diff_texts("1\n2\n3\n4\n5\n", "0\n1\n3\n5\n6\n");
        assert_eq!(added, ["0", "6"]);
        assert_eq!(removed, ["2", "4"]);
    }

    #[test]
    fn many_edits_fall_back_to_multiset_comparison() {
        let a: Vec<&str> = vec!["x", "y", "z", "y"];
        let b: Vec<&str> = vec!["y", "q", "x"];
        assert!(myers(&a, &b, 1).is_none());
        let (ka, kb) = multiset_common(&a, &b);
        assert_eq!(ka, [true, true, false, false]);
        assert_eq!(kb, [true, false, true]);
    }

    /// Length of a longest common subsequence, by the textbook table.
    fn lcs_len(a: &[&str], b: &[&str]) -> usize {
        let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in 0..a.len() {
            for j in 0..b.len() {
                t[i + 1][j + 1] = if a[i] == b[j] {
                    t[i][j] + 1
                } else {
                    t[i][j + 1].max(t[i + 1][j])
                };
            }
        }
        t[a.len()][b.len()]
    }

    proptest! {
        #[test]
        fn myers_keeps_a_longest_common_subsequence(
            a in prop::collection::vec("[abc]", 0..12),
            b in prop::collection::vec("[abc]", 0..12),
        ) {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            let (ka, kb) = myers(&a, &b, usize::MAX).unwrap();
            let common_a: Vec<&str> = a.iter().zip(&ka).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
            let common_b: Vec<&str> = b.iter().zip(&kb).filter(|(_, k)| **k).map(|(l, _)| *l).collect();
            prop_assert_eq!(&common_a, &common_b);
            prop_assert_eq!(common_a.len(), lcs_len(&a, &b));
        }

        #[test]
        fn diff_texts_counts_match_the_lcs(
            a in prop::collection::vec("[abc]", 0..12),
            b in prop::collection::vec("[abc]", 0..12),
        ) {
            let (added, removed) = diff_texts(&a.join("\n"), &b.join("\n"));
            let (ar, br): (Vec<&str>, Vec<&str>) = (
                a.iter().map(String::as_str).collect(),
                b.iter().map(String::as_str).collect(),
            );
            let common = lcs_len(&ar, &br);
            prop_assert_eq!(added.len(), b.len() - common);
            prop_assert_eq!(removed.len(), a.len() - common);
        }
    }
}
