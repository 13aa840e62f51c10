//! `sg-coldstart breakdown`: where a node's cold start goes, without NATS — the same
//! `key.issued` events decoded and folded in this process, timed per step (decode,
//! `State::apply`, the gateway's key-cache hook), with the memory each part holds
//! (RssAnon before and after) and the in-line sizes of the structs per key.

use std::time::{Duration, Instant};

use sg_state::{Changes, State};

use crate::fill::{self, History};
use crate::node::Memory;

fn rss_anon() -> u64 {
    Memory::read(std::process::id()).map_or(0, |m| m.rss_anon)
}

/// Keys whose views the breakdown builds, to time a first use.
const FIRST_USE_SAMPLE: u64 = 10_000;

pub fn run(keys: u64) -> anyhow::Result<()> {
    anyhow::ensure!(keys >= 1, "--keys must be at least 1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let (_, kms) = fill::master_key(dir.path())?;
    // The parents, folded first as a node would.
    let (history, parents): (History, _) = runtime.block_on(fill::parent_events(&*kms))?;
    let mut state = State::new();
    for (seq, env) in (1u64..).zip(&parents) {
        let decoded = sg_events::decode(&sg_events::encode(env))?;
        state
            .apply(seq, &env.subject(), &decoded)
            .map_err(|e| anyhow::anyhow!("folding the parents: {e}"))?;
    }

    let before = rss_anon();
    // As the replica does, knowing the stream's head (counted in the state's memory).
    state.reserve_keys(keys as usize);
    let (mut gen_t, mut decode_t, mut apply_t) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut payload_bytes = 0u64;
    let mut ids = Vec::with_capacity(keys as usize);
    // Hashes of the first keys, to time building their views on first use.
    let sampled = keys.min(FIRST_USE_SAMPLE) as usize;
    let mut hashes = Vec::with_capacity(sampled);
    for i in 0..keys {
        let t0 = Instant::now();
        let (env, key) = fill::key_issued(&history, format!("checkout-chatbot-prod-{i:06}"));
        if hashes.len() < sampled {
            hashes.push(key.hash());
        }
        let subject = env.subject();
        let payload = sg_events::encode(&env);
        let t1 = Instant::now();
        let decoded = sg_events::decode(&payload)?;
        let t2 = Instant::now();
        let changes = state
            .apply(4 + i, &subject, &decoded)
            .map_err(|e| anyhow::anyhow!("folding key {i}: {e}"))?;
        let t3 = Instant::now();
        gen_t += t1 - t0;
        decode_t += t2 - t1;
        apply_t += t3 - t2;
        payload_bytes += payload.len() as u64;
        ids.extend(changes.keys);
    }
    let after_state = rss_anon();

    let cache = sg_gateway::KeyCache::new();
    let mut hook = cache.hook();
    let mut hook_t = Duration::ZERO;
    let ids_bytes = ids.capacity() * std::mem::size_of::<sg_events::KeyId>() + ids.len() * 32;
    for id in ids.drain(..) {
        let changes = Changes {
            keys: vec![id],
            prices: false,
        };
        let t = Instant::now();
        hook(&state, &changes);
        hook_t += t.elapsed();
    }
    drop(ids);
    let _ = cache.views_held();
    let after_cache = rss_anon();

    // First use: the view built from the state and kept (the request path's miss).
    let t = Instant::now();
    let built = hashes
        .iter()
        .filter(|h| cache.get_from(&state, h).is_some())
        .count();
    let first_use_t = t.elapsed();
    anyhow::ensure!(
        built == hashes.len(),
        "{built} of {} keys found",
        hashes.len()
    );
    let t = Instant::now();
    let hits = hashes.iter().filter(|h| cache.get(h).is_some()).count();
    let hit_t = t.elapsed();
    anyhow::ensure!(
        hits == hashes.len(),
        "{hits} of {} views kept",
        hashes.len()
    );

    let sample = state.keys().next().map(|k| {
        let view = state.key_view(&k.id);
        (
            std::mem::size_of_val(k),
            std::mem::size_of_val(&k.locks),
            std::mem::size_of_val(&k.limits),
            view.as_ref().map_or(0, std::mem::size_of_val),
            view.as_ref().map_or(0, |v| std::mem::size_of_val(&v.locks)),
        )
    });
    let per = |d: Duration| d.as_secs_f64() * 1e6 / keys as f64;
    let per_key = |a: u64, b: u64| (a as f64 - b as f64) / keys as f64;
    println!(
        "sg-coldstart breakdown — {} key.issued events folded in one thread, no NATS",
        crate::report::thousands(keys)
    );
    println!(
        "  payload              {:.0} B per event (JSON)",
        payload_bytes as f64 / keys as f64
    );
    println!("time per event (µs)");
    println!(
        "  generate + encode    {:.2}   (not on a node's path)",
        per(gen_t)
    );
    println!("  decode (sg_events)   {:.2}", per(decode_t));
    println!("  State::apply         {:.2}", per(apply_t));
    println!(
        "  key-cache hook       {:.2}   (drops a cached view, if any; views are built on first use)",
        per(hook_t)
    );
    println!(
        "  fold total           {:.2}   → {:.1} s for these events on one core",
        per(decode_t + apply_t + hook_t),
        (decode_t + apply_t + hook_t).as_secs_f64()
    );
    if !hashes.is_empty() {
        let n = hashes.len() as f64;
        println!(
            "  first use            {:.2}   (State::key_view + moka insert, once per key used; {} keys)",
            first_use_t.as_secs_f64() * 1e6 / n,
            crate::report::thousands(hashes.len() as u64)
        );
        println!(
            "  cached lookup        {:.2}",
            hit_t.as_secs_f64() * 1e6 / n
        );
    }
    println!("memory per key (RssAnon deltas)");
    println!(
        "  sg_state::State      {:.0} B",
        per_key(after_state, before)
    );
    println!(
        "  gateway KeyCache     {:.0} B   (before any use; a scratch list of ids, {:.0} B/key, was freed before)",
        per_key(after_cache, after_state),
        ids_bytes as f64 / keys as f64
    );
    println!(
        "  total                {:.0} B",
        per_key(after_cache, before)
    );
    if let Some((key, locks, limits, view, view_locks)) = sample {
        println!("in-line sizes (bytes, before their heap parts)");
        println!(
            "  sg_state::Key {key} (locks {locks}, limits {limits}); KeyView {view} (locks {view_locks})"
        );
        println!(
            "  per key: the boxed Key and its heap strings (id, tenant, project, name, key_hash (64 hex), hint, connection ids); two 4-byte index positions (by id, by hash); its own subjects' sequences live in the Key"
        );
    }
    drop(cache);
    drop(state);
    Ok(())
}
