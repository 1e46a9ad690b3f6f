//! Deep mode (`--deep`): kprobes on the kernel functions a guest's packet passes
//! through, for function-level hops between the TC hooks. Which functions, and
//! where each takes its `struct sk_buff *`, is read from the running kernel's BTF;
//! a function this kernel lacks (renamed, inlined) is skipped and said so.

use crate::correlate::Stage;

use std::collections::HashMap;

/// The functions, in path order, with the stage each belongs to.
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("tun_get_user", "tap"),
    ("br_handle_frame_finish", "bridge"),
    ("br_forward", "bridge"),
    ("br_pass_frame_up", "bridge"),
    ("br_dev_queue_push_xmit", "bridge"),
    ("ip_rcv", "prerouting"),
    ("ip_route_input_noref", "routing"),
    ("ip_forward", "forward"),
    ("ip_forward_finish", "forward"),
    ("ip_local_deliver", "input"),
    ("nf_hook_slow", "netfilter"),
    ("nf_nat_manip_pkt", "nat"),
    ("ip_output", "postrouting"),
    ("ip_finish_output2", "neighbor"),
    ("neigh_resolve_output", "neighbor"),
    ("__dev_queue_xmit", "egress"),
    ("dev_hard_start_xmit", "egress"),
    ("veth_xmit", "egress"),
    ("tun_net_xmit", "tap"),
];

/// The stage word of a deep hop: the function's own, except netfilter and NAT
/// which belong to the stage around them (the path's previous stage).
pub fn stage_of(function: &str) -> Option<Stage> {
    // "netfilter" and "nat" functions run at several stages: none of them.
    FUNCTIONS
        .iter()
        .find(|(f, _)| *f == function)
        .and_then(|(_, s)| Stage::from_word(s))
}

/// What to attach: (function, position of its skb argument), for the positions
/// the programs cover; and the functions left out, with why.
pub fn plan(
    skb_params: &HashMap<String, usize>,
    programs: usize,
) -> (Vec<(String, usize)>, Vec<String>) {
    let mut attach = Vec::new();
    let mut skipped = Vec::new();
    for (f, _) in FUNCTIONS {
        match skb_params.get(*f) {
            Some(&i) if i < programs => attach.push((f.to_string(), i)),
            Some(&i) => skipped.push(format!("deep: {f} (its packet is argument {i})")),
            None => skipped.push(format!(
                "deep: {f} (not in this kernel's BTF with a struct sk_buff * argument)"
            )),
        }
    }
    (attach, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_by_argument_position() {
        let params = HashMap::from([
            ("ip_forward".to_string(), 0),
            ("ip_finish_output2".to_string(), 2),
            ("dev_hard_start_xmit".to_string(), 5),
        ]);
        let (attach, skipped) = plan(&params, 4);
        assert_eq!(
            attach,
            [
                ("ip_forward".to_string(), 0),
                ("ip_finish_output2".to_string(), 2)
            ]
        );
        assert_eq!(skipped.len(), FUNCTIONS.len() - 2);
        assert_eq!(stage_of("ip_forward"), Some(Stage::Forward));
        assert_eq!(stage_of("nf_hook_slow"), None);
    }
}
