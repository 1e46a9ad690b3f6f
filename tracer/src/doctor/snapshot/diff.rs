//! Line diffs between a snapshot and now: order-aware (a longest common
//! subsequence) while that is cheap, as multisets past that.

use std::collections::HashMap;

/// More edits than this in one file and the order-aware diff would need too
/// much memory (it grows with the square); such files are compared as multisets.
pub(super) const MAX_ORDERED_EDITS: usize = 2000;

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
pub(super) fn myers(a: &[&str], b: &[&str], max_edits: usize) -> Option<(Vec<bool>, Vec<bool>)> {
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
pub(super) fn walk_back(trace: &[Vec<isize>], n: isize, m: isize) -> (Vec<bool>, Vec<bool>) {
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
pub(super) fn multiset_common(a: &[&str], b: &[&str]) -> (Vec<bool>, Vec<bool>) {
    (kept_by_count(a, b), kept_by_count(b, a))
}

/// For each line of `lines`, whether `other` still has an unmatched copy of it.
pub(super) fn kept_by_count(lines: &[&str], other: &[&str]) -> Vec<bool> {
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
