//! What bpftool tells about the attached program: run-time statistics, its maps and their memory.

use super::*;

pub(super) fn prog_sample(id: u32) -> Result<ProgSample> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    let run_ns = v["run_time_ns"].as_u64();
    Ok(ProgSample {
        run_ns: run_ns.unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
        stats_on: run_ns.is_some(),
    })
}

pub(super) fn prog_maps(id: u32) -> Result<Vec<u32>> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    let ids = v["map_ids"]
        .as_array()
        .context("no map_ids in bpftool prog show")?
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect();
    Ok(ids)
}

/// Memory of the program's maps plus the inner maps of any map-in-map (the Maglev rings).
pub(super) fn maps_memory(ids: &[u32]) -> Result<MapMemory> {
    let mut total = 0;
    let mut maps = Vec::new();
    let mut inner_total = (0u64, 0u64);
    for &id in ids {
        let v = bpftool_json(&["map", "show", "id", &id.to_string()])?;
        let bytes = v["bytes_memlock"].as_u64().unwrap_or(0);
        total += bytes;
        let name = v["name"].as_str().unwrap_or("?").to_string();
        maps.push((name, bytes, v["max_entries"].as_u64().unwrap_or(0)));
        if v["type"].as_str().is_some_and(|t| t.contains("of_maps")) {
            for inner in inner_map_ids(id) {
                if let Ok(iv) = bpftool_json(&["map", "show", "id", &inner.to_string()]) {
                    let b = iv["bytes_memlock"].as_u64().unwrap_or(0);
                    total += b;
                    inner_total.0 += b;
                    inner_total.1 += iv["max_entries"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    if inner_total.0 > 0 {
        maps.push(("rings (inner)".into(), inner_total.0, inner_total.1));
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.1));
    Ok(MapMemory { total, maps })
}

/// Inner map ids held by a map-in-map, from `bpftool map dump` (values are inner map ids).
pub(super) fn inner_map_ids(id: u32) -> Vec<u32> {
    let Ok(v) = bpftool_json(&["map", "dump", "id", &id.to_string()]) else {
        return Vec::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let val = &e["value"];
            val.as_u64()
                .or_else(|| val["inner_map_id"].as_u64())
                .or_else(|| {
                    // Raw little-endian bytes ("0x2a", ...) in older formats.
                    let bytes: Vec<u8> = val
                        .as_array()?
                        .iter()
                        .filter_map(|b| {
                            u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()
                        })
                        .collect();
                    (bytes.len() == 4).then(|| {
                        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64
                    })
                })
        })
        .map(|x| x as u32)
        .collect()
}

pub(super) fn bpftool_json(args: &[&str]) -> Result<Value> {
    let mut cmd = vec!["bpftool", "-j"];
    cmd.extend_from_slice(args);
    let out = netns::run_root(&cmd)?;
    serde_json::from_str(&out).with_context(|| format!("bpftool printed {out}"))
}

/// The id of the XDP program attached to `dev` in `ns`, from `ip -j link`.
pub(super) fn xdp_prog_id(ns: &str, dev: &str) -> Result<u32> {
    let out = netns::run_root(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out)?;
    let xdp = &v[0]["xdp"];
    let id = xdp["prog"]["id"].as_u64().or_else(|| {
        xdp["attached"]
            .as_array()?
            .iter()
            .find_map(|a| a["prog"]["id"].as_u64())
    });
    id.map(|i| i as u32)
        .with_context(|| format!("no XDP program on {dev} in {ns}: {out}"))
}
