//! The agent's side of the control API: each request becomes a config change or a read.
//!
//! A change is validated as a whole config, written as one generation and saved to the file; a read
//! looks at the running state. Both are answered with the contract's types.

use std::{net::IpAddr, path::PathBuf, sync::atomic::Ordering, time::Instant};

use anyhow::{anyhow, bail};
use tokio::sync::oneshot;

use crate::{
    agent::api::{
        Answer, BackendStatus, BalancerState, HealthState, Plan, Request, Response, Status,
        VipStatus,
    },
    agent::health,
    agent::state::{answer, fixed_part, Agent, Done, Waiting},
    config::{BackendConfig, BackendState, Config, Vip, Weight},
    datapath::reconcile::Report,
    model::plan,
};

impl Agent {
    /// Answers `req` now, or (for a change that left backends waiting for their MAC) once
    /// those are resolved or the resolver's grace period has passed.
    pub(crate) fn handle(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let changed = match req {
            Request::Status => return answer(reply, Ok(Answer::Status(self.status()))),
            Request::VipList => {
                return answer(reply, Ok(Answer::Vips(self.cfg.vips.to_vec())));
            }
            Request::BackendList { vip } => {
                let list = self.backend_list(vip.as_deref()).map(Answer::Backends);
                return answer(reply, list);
            }
            Request::Plan { config } => return answer(reply, self.plan(&config).map(Answer::Plan)),
            Request::Reload => self.reload("API request").map(|r| (r, None)),
            Request::BalancerDrain => return answer(reply, self.set_drained(true)),
            Request::BalancerResume => return answer(reply, self.set_drained(false)),
            change => self.change(change),
        };
        match changed {
            Err(e) => answer(reply, Err(e)),
            Ok((report, written_to)) => {
                let done = Done::Reply { reply, written_to };
                self.waiting.push(Waiting::new(done, report));
                self.answer_waiting(false);
            }
        }
    }

    /// Applies a change of the VIP list, validated as a whole new config, and saves it.
    fn change(&mut self, req: Request) -> anyhow::Result<(Report, Option<PathBuf>)> {
        let mut vips = self.cfg.vips.to_vec();
        edit(&mut vips, req)?;
        let new = self
            .cfg
            .with_vips(vips)
            .map_err(|e| anyhow!("the changed config: {e}"))?;
        let report = self.switch_to(new)?;
        self.file.write(&self.cfg)?;
        Ok((report, Some(self.file.path.clone())))
    }

    fn plan(&self, text: &str) -> anyhow::Result<Plan> {
        let new = Config::from_yaml(text, "the proposed config")?;
        if fixed_part(&new) != fixed_part(&self.cfg) {
            bail!("the proposed config changes interface, xdp_mode, pin_path, flow_table_size, api_socket or metrics: that needs a restart");
        }
        let proposed = self.build(&new)?;
        Ok(Plan {
            changes: plan::changes(&self.cfg, &self.current, &new, &proposed),
        })
    }

    fn backend_list(&self, vip: Option<&str>) -> anyhow::Result<Vec<VipStatus>> {
        if let Some(name) = vip {
            find_vip(&self.cfg.vips.to_vec(), name)?;
        }
        let mut list = self.status().vips;
        list.retain(|v| vip.is_none_or(|n| v.name == n));
        Ok(list)
    }

    pub(crate) fn status(&self) -> Status {
        let health = self.monitor.view();
        let now = Instant::now();
        let ids = &self.current.ids;
        let failing = &self.current.failing;
        let vips = self
            .cfg
            .vips
            .iter()
            .map(|v| {
                let vip_id = ids
                    .vips
                    .get(&crate::model::desired::vip_identity(v))
                    .copied();
                let backends = v
                    .backends
                    .iter()
                    .map(|b| {
                        // Written to the maps: a backend waiting for its MAC has an id already
                        // (ids follow the config) but no entry yet.
                        let id = vip_id
                            .and_then(|vid| ids.backends.get(&(vid, b.address)).copied())
                            .filter(|i| self.current.backends.contains_key(i));
                        let target = health::Target {
                            vip: v.name.clone(),
                            backend: b.address,
                        };
                        BackendStatus {
                            address: b.address,
                            state: b.state,
                            weight: b.weight.0,
                            // As the datapath has it: a failure waiting to be applied
                            // (transitions are applied together) is not reported yet.
                            health: match health.health(&target) {
                                None => HealthState::Unchecked,
                                Some(_) if failing.contains(&(v.name.clone(), b.address)) => {
                                    HealthState::Down
                                }
                                Some(_) => HealthState::Up,
                            },
                            in_service: id.is_some(),
                            idle_seconds: id
                                .and_then(|i| self.activity.get(&i))
                                .map(|(_, t)| now.duration_since(*t).as_secs()),
                        }
                    })
                    .collect();
                VipStatus {
                    name: v.name.clone(),
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol,
                    health_panic: self.current.vip(&v.name).is_some_and(|d| d.panic),
                    backends,
                }
            })
            .collect();
        Status {
            interface: self.cfg.interface.as_str().to_owned(),
            datapath: match &self.datapath_down {
                Some(why) => format!("down: {why}"),
                None => self.attach_note.clone(),
            },
            datapath_up: self.datapath_down.is_none(),
            adopted_previous_state: self.adopted,
            config: self.file.path.clone(),
            reloads_ok: self.shared.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.shared.reloads_failed.load(Ordering::Relaxed),
            announced: self
                .announcer
                .as_ref()
                .and_then(|a| a.announced())
                .map(|set| set.iter().copied().collect()),
            announce_error: self.announce_error.clone(),
            balancer_drained: self.drained,
            vips,
        }
    }

    /// `xdplb drain-balancer` / `resume-balancer`: withdraw every VIP (or announce the
    /// servable ones again) and answer once BIRD has taken it. A drain BIRD refuses stays
    /// set and is retried every second, so it is never lost, but the answer says it failed.
    fn set_drained(&mut self, drained: bool) -> anyhow::Result<Answer> {
        let Some(announce) = self.cfg.announce.clone() else {
            bail!("this agent announces nothing (its config has no announce: section), so there is nothing to withdraw; stop it instead");
        };
        if self.drained != drained {
            log::info!(
                "{}",
                if drained {
                    "balancer drained (API request): withdrawing every VIP, still forwarding"
                } else {
                    "balancer resumed (API request): announcing servable VIPs again"
                }
            );
        }
        self.drained = drained;
        self.shared.drained.store(drained, Ordering::Relaxed);
        self.announce();
        if let Some(e) = &self.announce_error {
            bail!("BIRD did not take the change ({e}); retried every second");
        }
        Ok(Answer::Balancer(BalancerState {
            drained,
            announced: self
                .announcer
                .as_ref()
                .and_then(|a| a.announced())
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
            withdraw_delay_ms: announce.withdraw_delay.as_millis() as u64,
        }))
    }
}

/// The VIP list as `req` wants it.
fn edit(vips: &mut Vec<Vip>, req: Request) -> anyhow::Result<()> {
    match req {
        Request::VipAdd { vip } => {
            if vips.iter().any(|v| v.name == vip.name) {
                bail!("VIP {:?} exists already", vip.name);
            }
            vips.push(vip);
        }
        Request::VipRemove { name } => {
            let before = vips.len();
            vips.retain(|v| v.name != name);
            if vips.len() == before {
                bail!("no VIP named {name:?} (`xdplb vip list` shows them)");
            }
        }
        Request::BackendAdd { vip, backend } => edit_backends(vips, &vip, |list| {
            if list.iter().any(|b| b.address == backend.address) {
                bail!("VIP {vip}: backend {} exists already", backend.address);
            }
            list.push(backend);
            Ok(())
        })?,
        Request::BackendRemove { vip, address } => edit_backends(vips, &vip, |list| {
            let before = list.len();
            list.retain(|b| b.address != address);
            if list.len() == before {
                bail!("VIP {vip} has no backend {address}");
            }
            Ok(())
        })?,
        Request::BackendDrain { vip, address } => edit_backends(vips, &vip, |list| {
            set_backend(list, &vip, address, |b| b.state = BackendState::Draining)
        })?,
        Request::BackendActivate { vip, address } => edit_backends(vips, &vip, |list| {
            set_backend(list, &vip, address, |b| b.state = BackendState::Active)
        })?,
        Request::BackendWeight {
            vip,
            address,
            weight,
        } => {
            let w = Weight::try_from(weight).map_err(|e| anyhow!(e))?;
            edit_backends(vips, &vip, |list| {
                set_backend(list, &vip, address, |b| b.weight = w)
            })?
        }
        other => bail!("{other:?} is not a change"),
    }
    Ok(())
}

fn edit_backends(
    vips: &mut [Vip],
    vip: &str,
    change: impl FnOnce(&mut Vec<BackendConfig>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let v = vips
        .iter_mut()
        .find(|v| v.name == vip)
        .ok_or_else(|| anyhow!("no VIP named {vip:?} (`xdplb vip list` shows them)"))?;
    let mut list = v.backends.to_vec();
    change(&mut list)?;
    v.backends = list.try_into().map_err(|e: String| anyhow!(e))?;
    Ok(())
}

fn find_vip<'a>(vips: &'a [Vip], name: &str) -> anyhow::Result<&'a Vip> {
    vips.iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow!("no VIP named {name:?} (`xdplb vip list` shows them)"))
}

fn set_backend(
    list: &mut [BackendConfig],
    vip: &str,
    address: IpAddr,
    f: impl FnOnce(&mut BackendConfig),
) -> anyhow::Result<()> {
    let b = list
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| anyhow!("VIP {vip} has no backend {address}"))?;
    f(b);
    Ok(())
}
