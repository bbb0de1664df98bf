"""The printed (Markdown) table and the target verdicts."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render(data: dict[str, Any]) -> str:
    meta, results = data["meta"], data["results"]
    m = meta["machine"]
    gen = meta["generator"]
    cpu = meta["cpu"]
    lines = [
        f"ari-broadcast-proxy benchmark, {meta['mode']} run, {meta['date']}",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']} (the proxy: {meta.get('proxy_python') or m['python']}), "
        f"Asterisk {meta['asterisk']} (sandbox); everything on these cores",
        f"- proxy: {meta.get('proxy_revision', '?')}",
        f"- CPU over the measurements ({cpu['wall_s']} s, share of {m['cores']} cores): load "
        f"generator {_pct(cpu['generator_share'])} ({gen['processes']} worker processes: "
        f"{gen['processes'] - 1} with the applications, 1 originator), proxy "
        f"{_pct(cpu['proxy_share'])}"
        + (" (with the replicas)" if cpu.get("redis_share") else "")
        + f", Asterisk {_pct(cpu['asterisk_share'])}"
        + (f", redis-server {_pct(cpu['redis_share'])}" if cpu.get("redis_share") else "")
        + ", everything else on the machine "
        f"{_pct(cpu['other_share'])}; whole run {meta['total_seconds']} s",
        "",
    ]
    verdicts: list[tuple[str, bool | None, str]] = []

    if "latency" in results:
        rows = results["latency"]["rows"]
        lines += [
            "### 1-2. Broadcast and claim latency (ms)",
            "",
            "Broadcast: originate request sent -> CallBroadcast received, per application. "
            "End-to-end from",
            "origination: identical Asterisk work on both paths (originate, Local channel, "
            "dialplan) except",
            "the broadcast itself. Claim: the winning claim sent -> the winner's StasisStart "
            "received.",
            f"{rows[0]['target_rate'] if rows else '-'} calls/s; up to 10 applications race "
            "for every call.",
            "",
            "| apps (racing) | calls | broadcast native p50 / p99 | broadcast proxy p50 / p99 "
            "| claim native p50 / p99 | claim proxy p50 / p99 |",
            "|---|---|---|---|---|---|",
        ]
        floor = results["latency"].get("hop_floor")
        hop = floor["paced"]["p50"] if floor else None
        by_apps: dict[int, dict[str, dict[str, Any]]] = {}
        for row in rows:
            by_apps.setdefault(row["apps"], {})[row["path"]] = row
        for apps, pair in by_apps.items():
            n, p = pair.get("native"), pair.get("proxy")
            if not (n and p):
                continue
            lines.append(
                f"| {apps} ({n['racers']}) | {n['calls']} | {_f(n['broadcast_ms']['p50'])} / "
                f"{_f(n['broadcast_ms']['p99'])} | {_f(p['broadcast_ms']['p50'])} / "
                f"{_f(p['broadcast_ms']['p99'])} | {_f(n['claim_to_start_ms']['p50'])} / "
                f"{_f(n['claim_to_start_ms']['p99'])} | {_f(p['claim_to_start_ms']['p50'])} / "
                f"{_f(p['claim_to_start_ms']['p99'])} |"
            )
            nb, pb = n["broadcast_ms"]["p50"], p["broadcast_ms"]["p50"]
            # The proxy's extra hop (half a round trip) is the floor; 0.3 ms of work on top.
            allowed = None if nb is None or hop is None else nb + hop / 2 + 0.3
            verdicts.append(
                (
                    f"CallBroadcast p50 <= native + hop floor + 0.3 ms ({apps} apps)",
                    _le(pb, allowed),
                    f"{_f(pb)} vs {_f(nb)} ms" + _floor_note(hop, 0.5),
                )
            )
            nc, pc = n["claim_to_start_ms"]["p50"], p["claim_to_start_ms"]["p50"]
            slack = 1.0 if apps == 1 else 1.5
            verdicts.append(
                (
                    f"claim->StasisStart p50 <= native + {slack:g} ms ({apps} apps)",
                    _le(pc, None if nc is None else nc + slack),
                    f"{_f(pc)} vs {_f(nc)} ms" + _floor_note(hop, 1.0),
                )
            )
            lost = [r for r in (n, p) if r["claimed"] != r["calls"]]
            for r in lost:
                lines.append(
                    f"|   {r['path']}: {r['claimed']}/{r['calls']} claimed: "
                    f"{r['failures']} | | | | | |"
                )
        if floor:
            lines += [
                "",
                f"Hop floor, measured in this run: a {floor['size']}-byte loopback round trip "
                "between two generator processes,",
                f"idle in between as at {rows[0]['target_rate'] if rows else '-'} calls/s: p50 "
                f"{_f(floor['paced']['p50'], 3)} ms, p99 {_f(floor['paced']['p99'], 3)} ms "
                f"(back to back: p50 {_f(floor['back_to_back']['p50'], 3)} ms). The proxy path "
                "has one hop",
                "more per broadcast (Asterisk -> proxy -> application) and two more per claim "
                "(application -> proxy",
                "-> Asterisk -> proxy -> application): half a round trip and one round trip over "
                "native before any proxy work.",
            ]
        lines.append("")

    if "throughput" in results:
        t = results["throughput"]
        lines += [
            f"### 3. Throughput ({t['apps']} racing applications, {t['step_seconds']} s steps)",
            "",
            "Highest rate at which >= 99.9 % of calls were claimed (the winner got StasisStart) "
            "within the",
            "5 s broadcast timeout counted from origination; rates step up until a path's first "
            "failing step.",
            "CPU: share of the machine (other = everything else running on it meanwhile).",
            "",
            "| path | calls/s target | achieved | claimed | broadcast p50 / p99 ms | claim p50 / "
            "p99 ms | CPU gen / proxy / Asterisk / other | proxy CPU ms/call | result |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in t["steps"]:
            cpu = row["cpu"]
            result = "ok" if row["passed"] else "FAILED"
            lines.append(
                f"| {row['path']} | {row['target_rate']:g} | {_f(row['achieved_rate'], 1)} | "
                f"{row['claimed']}/{row['calls']} | {_f(row['broadcast_ms']['p50'])} / "
                f"{_f(row['broadcast_ms']['p99'])} | {_f(row['claim_to_start_ms']['p50'])} / "
                f"{_f(row['claim_to_start_ms']['p99'])} | {_pct(cpu['generator_share'])} / "
                f"{_pct(cpu['proxy_share'])} / {_pct(cpu['asterisk_share'])} / "
                f"{_pct(cpu['other_share'])} | "
                f"{_f(_cpu_per_call(row)) if row['path'] == 'proxy' else ''} | {result} |"
            )
        lines.append("")
        for path in ("native", "proxy"):
            best = t["best"].get(path)
            broke = t["broke"].get(path)
            text = f"- {path}: sustained {best if best is not None else 'none'} calls/s; "
            if broke:
                reasons = "; ".join(
                    f"{k} ({v})" if v else k for k, v in list(broke["reasons"].items())[:4]
                )
                claims = ", ".join(
                    f"{k} x{v}" for k, v in list(broke["claim_outcomes"].items())[:4]
                )
                text += f"broke at {broke['rate']:g}/s: {reasons or 'n/a'}; claims: {claims}"
                if broke.get("diagnosis"):
                    text += "; " + "; ".join(broke["diagnosis"])
            else:
                text += "did not break within the steps"
            lines.append(text)
        lines.append("")
        nb, pb = t["best"].get("native"), t["best"].get("proxy")
        capped = not t["broke"].get("native") and not t["broke"].get("proxy")
        verdicts.append(
            (
                "proxy calls/s >= 0.8 x native at 10 apps",
                None if capped and nb == pb else _le(None if nb is None else 0.8 * nb, pb),
                f"{pb} vs {nb} calls/s" + (" (neither broke: raise the steps)" if capped else ""),
            )
        )
        sustained = [
            r for r in t["steps"] if r["path"] == "proxy" and r["target_rate"] == pb and r["passed"]
        ]
        if sustained:
            per_call = _cpu_per_call(sustained[0])
            verdicts.append(
                (
                    "proxy CPU per call <= 1.0 ms at 10 racing apps (highest sustained rate)",
                    per_call <= 1.0,
                    f"{per_call:.2f} ms at {pb} calls/s",
                )
            )

    if "claims" in results:
        lines += _claims(results["claims"], verdicts)

    if "passthrough" in results:
        pt = results["passthrough"]
        lines += [
            "### 4. Pass-through cost",
            "",
            "Sequential requests, direct and proxied interleaved (order alternating every "
            "round), ms:",
            "",
            "| request | n | direct p50 / p99 | proxied p50 / p99 | added p50 / p99 | paired "
            "added p50 | req/s direct | req/s proxied |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for endpoint, row in pt["sequential"].items():
            conc = pt["concurrent"][endpoint]
            lines.append(
                f"| GET /ari/{endpoint} | {row['direct_ms']['n']} | "
                f"{_f(row['direct_ms']['p50'], 3)} / {_f(row['direct_ms']['p99'], 3)} | "
                f"{_f(row['proxied_ms']['p50'], 3)} / "
                f"{_f(row['proxied_ms']['p99'], 3)} | {_f(row['added_p50_ms'], 3)} / "
                f"{_f(row['added_p99_ms'], 3)} | {_f(row['paired_added_p50_ms'], 3)} | "
                f"{conc['direct']['rps']:.0f} | {conc['proxied']['rps']:.0f} |"
            )
            verdicts.append(
                (
                    f"pass-through added p50 <= 0.5 ms (GET /ari/{endpoint})",
                    row["added_p50_ms"] <= 0.5,
                    f"{row['added_p50_ms']:.3f} ms",
                )
            )
        clients = next(iter(pt["concurrent"].values()))["direct"]["clients"]
        lines += [f"(req/s: {clients} concurrent clients in 2 processes)", ""]

    if "relay" in results:
        r = results["relay"]
        eps = r["events_per_s"]
        lines += [
            "### 4b. Events relayed (one subscribeAll socket)",
            "",
            f"[bench-events] x {r['loops']} parallel loops of {r['iterations']} UserEvent() "
            "make Asterisk publish as fast as it can",
            "(ChannelUserevent, ChannelVarset, ChannelDialplan); events received / seconds "
            "from first to last.",
            "",
            "| socket | events/s | events per run |",
            "|---|---|---|",
            f"| direct to Asterisk | {_f(eps['direct'])} | "
            f"{', '.join(str(x['events']) for x in r['runs']['direct'])} |",
            f"| through the proxy | {_f(eps['proxied'])} | "
            f"{', '.join(str(x['events']) for x in r['runs']['proxied'])} |",
            "",
        ]
        verdicts.append(
            (
                "relay >= 80 % of direct events/s",
                None if r["ratio"] is None else r["ratio"] >= 0.8,
                _pct(r["ratio"]),
            )
        )

    if "memory" in results:
        mem = results["memory"]
        pts = mem["points"]
        lines += [
            "### 5. Proxy memory",
            "",
            f"Calls through the proxy at {mem['rate']:g}/s, each claimed at once by the one "
            "connected application and released;",
            "RSS (psutil) after the calls ended and the proxy's 5 s hand-over watchdogs expired.",
            "",
            "| after calls | RSS MB | claimed | proxy CPU ms/call |",
            "|---|---|---|---|",
            f"| 0 (start of section) | {mem['rss_start_mb']} | | |",
        ]
        lines += [
            f"| {p['calls']} | {p['rss_mb']} | {p['claimed']}/{p['of']} | "
            f"{p['proxy_cpu_ms_per_call']} |"
            for p in pts
        ]
        lines.append("")
        verdicts.append(
            (
                f"RSS after {pts[-1]['calls']} calls within 10 % of after {pts[0]['calls']}",
                abs(mem["growth"]) <= 0.10,
                f"{mem['growth'] * 100:+.1f} %",
            )
        )

    if "replicas" in results:
        lines += _replicas(results["replicas"])

    if "fleet" in results:
        lines += _fleet(results["fleet"])

    if verdicts:
        lines += ["### Targets", ""]
        for name, ok, detail in verdicts:
            mark = "n/a" if ok is None else ("met" if ok else "NOT met")
            lines.append(f"- {name}: **{mark}** ({detail})")
    return "\n".join(lines)


def _cpu_per_call(step: dict[str, Any]) -> float:
    """The proxy's CPU over a step (idle included) divided by the step's calls, ms."""
    return float(step["cpu"]["proxy_cpu_s"]) * 1000 / max(1, step["calls"])


def _claims(c: dict[str, Any], verdicts: list[tuple[str, bool | None, str]]) -> list[str]:
    lines = [
        "### 3b. A losing claim, over HTTP and over REST over WebSocket",
        "",
        "One call on offer, won; a second application then claims it again and again (409),",
        "10 at a time: over keep-alive HTTP connections, then as RESTRequest frames on its "
        "events socket.",
        "CPU per claim of the proxy and of Asterisk (natively, Asterisk answers; through the "
        "proxy, the proxy does).",
        "",
        "| path | over | claims | statuses | round trip p50 / p99 ms | claims/s | CPU per claim: "
        "proxy / Asterisk us |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, row in c.items():
        if path in {"params", "seconds"}:
            continue
        for transport, r in row.items():
            statuses = ", ".join(f"{k} x{v}" for k, v in r["statuses"].items())
            lines.append(
                f"| {path} | {'HTTP' if transport == 'http' else 'REST over WebSocket'} | "
                f"{r['claims']} | {statuses} | {_pair(r['rtt_ms'], 'p50', 'p99', 3)} | "
                f"{r['claims_per_s']} | {r['proxy_cpu_us']:.0f} / {r['asterisk_cpu_us']:.0f} |"
            )
    lines.append("")
    proxy = c.get("proxy")
    if proxy:
        http, ws = proxy["http"]["proxy_cpu_us"], proxy["ws"]["proxy_cpu_us"]
        verdicts.append(
            (
                "a claim over REST over WebSocket costs the proxy less CPU than over HTTP",
                ws < http,
                f"{ws:.0f} vs {http:.0f} us per losing claim",
            )
        )
    return lines


def _pair(d: dict[str, Any] | None, a: str = "p50", b: str = "p95", digits: int = 2) -> str:
    if not d:
        return "-"
    return f"{_f(d.get(a), digits)} / {_f(d.get(b), digits)}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"x{ratio:.2f}"


def _ops(ops: dict[str, Any] | None) -> str:
    if not ops:
        return "-"
    return f"{_f(ops['per_call_raw'], 1)} / {_f(ops['per_call_net'], 1)}"


def _outcome(step: dict[str, Any]) -> str:
    if step["passed"]:
        return "ok"
    return "FAILED (late only)" if step.get("continued") else "FAILED"


def _replicas(r: dict[str, Any]) -> list[str]:
    """Section 6: the replicas against the single proxy without Redis."""
    setups, summary = r["setups"], r["summary"]
    p = r.get("settings", {})
    lines = [
        f"### 6. Replicas sharing Redis ({r['apps']} racing applications spread over the replicas)",
        "",
        "Baseline: the benchmark's proxy without Redis, in this run. Then 1, 2 and 3 replicas "
        "(`--cluster-url`, one",
        "redis-server), each setup started fresh and stopped before the next; application i "
        "connects to replica",
        "i mod N and claims through it. Claim: the winner's CallBroadcast received -> its 204 "
        f"(at {_f(p.get('latency_rate'))} calls/s,",
        f"{_f(p.get('latency_calls'))} calls). Throughput: the section 3 ladder in "
        f"{_f(p.get('step_seconds'))} s steps; a step also fails when origination -> "
        "StasisStart p95",
        f"exceeds {_f(p.get('backlog_ms'))} ms (a backlog: short steps end before one costs "
        "the timeout). Redis ops/call: the rise",
        "of `ari_proxy_cluster_operations` over all replicas / calls, raw and net of the idle "
        f"rate (measured over {_f(p.get('idle_seconds'))} s);",
        "scripts/call: the scripts Redis itself ran per call, less announcements and lease "
        "renewals. x: ratio to no Redis.",
        "",
        "| setup | calls/s sustained | x | kept up to* | x | claim p50 / p95 ms | x p50 / p95 | "
        "claim -> StasisStart p50 / p95 | broadcast p50 / p95 | Redis ops/call raw / net | "
        "scripts/call | idle ops/s (expected) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        ratio = row.get("ratio") or {}
        ops = row["ops_per_call"]
        idle = row["idle_ops_per_s"]
        sustained = _f(row["calls_per_s"])
        if row["broke_at"] is None and row["calls_per_s"] is not None:
            sustained = f">= {row['calls_per_s']:g}"  # the ladder's top: did not break
        elif row["calls_per_s"] is None and row["broke_at"] is not None:
            sustained = f"< {row['broke_at']:g}"
        expected = next(
            (s.get("idle_expected_ops_per_s") for s in setups if s["setup"] == row["setup"]),
            None,
        )
        lines.append(
            f"| {row['setup']} | {sustained} | {_x(ratio.get('calls_per_s'))} | "
            f"{_f(row.get('kept_up_to'))} | {_x(ratio.get('kept_up_to'))} | "
            f"{_pair(row['claim_answer_ms'])} | {_x(ratio.get('claim_answer_p50'))} / "
            f"{_x(ratio.get('claim_answer_p95'))} | {_pair(row['claim_to_start_ms'])} | "
            f"{_pair(row['broadcast_ms'])} | {_ops(ops)} | "
            f"{_f((ops or {}).get('scripts_per_call'))} | "
            f"{_f(idle, 1)}{'' if expected is None else f' ({expected:g})'} |"
        )
    lines += [
        "",
        "\\* kept up to: the highest rate up to which every step passed or lost only a few "
        "calls (<= 1 %) to a late",
        "StasisStart, with no backlog; the ladder climbs on past such steps, the rule's figure "
        "stays the one before.",
        "",
        "| setup | calls/s target | achieved | claimed | claim p50 / p95 ms | origination -> "
        "StasisStart p95 ms | Redis ops/call raw / net | scripts/call | CPU gen / proxies / "
        "Asterisk / Redis / other | busiest replica | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in setups:
        for step in s["throughput"]["steps"]:
            cpu = step["cpu"]
            cores = cpu.get("replica_cores")
            lines.append(
                f"| {s['setup']} | {step['target_rate']:g} | {_f(step['achieved_rate'], 1)} | "
                f"{step['claimed']}/{step['calls']} | {_pair(step['claim_answer_ms'])} | "
                f"{_f(step['end_to_end_ms']['p95'])} | {_ops(step.get('redis_ops'))} | "
                f"{_f((step.get('redis_ops') or {}).get('scripts_per_call'))} | "
                f"{_pct(cpu['generator_share'])} / {_pct(cpu['proxy_share'])} / "
                f"{_pct(cpu['asterisk_share'])} / {_pct(cpu.get('redis_share'))} / "
                f"{_pct(cpu['other_share'])} | "
                f"{'-' if not cores else f'{max(cores) * 100:.0f}% of a core'} | "
                f"{_outcome(step)} |"
            )
    lines.append("")
    for s in setups:
        broke = next(iter(s["throughput"]["broke"].values()), None)
        if broke:
            reasons = "; ".join(
                f"{k} ({v})" if v else k for k, v in list(broke["reasons"].items())[:4]
            )
            text = f"- {s['setup']}: broke at {broke['rate']:g}/s: {reasons or 'n/a'}"
            if broke.get("diagnosis"):
                text += "; " + "; ".join(broke["diagnosis"])
            lines.append(text)
        idle, expected = s.get("idle_ops_per_s"), s.get("idle_expected_ops_per_s")
        if idle is not None and expected and idle > 3 * expected:
            lines.append(
                f"- {s['setup']}: idle Redis traffic {idle:.0f} round trips/s "
                f"({s.get('idle_announcements_per_s', 0):.0f} announcements/s), where the "
                f"loops' periods make about {expected:g}/s: the replicas keep announcing to "
                "one another. The net per-call figure subtracts an idle rate that changes "
                "with load; scripts/call (Redis's own count) does not depend on it."
            )
    lines.append("")
    return lines


def _both(d: dict[str, Any], digits: int = 3) -> str:
    """A fleet row's figure for the 1-server and the 3-server proxy."""
    return f"{_f(d.get('1'), digits)} / {_f(d.get('3'), digits)}"


def _fleet(f: dict[str, Any]) -> list[str]:
    """Section 7: the proxy over three Asterisk servers."""
    servers = f.get("servers", 3)
    lines = [
        f"### 7. Several Asterisk servers ({servers} sandbox instances, one proxy)",
        "",
        f"A second proxy with `--upstream` for all {servers} servers (the benchmark's own first)"
        ", against the same",
        "requests straight to Asterisk and through the benchmark's one-server proxy. One "
        "channel held on every server;",
        "sequential GETs, one per target per round, interleaved (order alternating every round)"
        "; ms. Added: proxied",
        "minus direct (paired: per round). Proxy CPU: its own CPU over the run per 1000 of its "
        "requests.",
        "",
    ]
    routing = f.get("routing")
    if routing:
        lines += [
            "| request | n | direct p50 / p99 | 1 server p50 / p99 | 3 servers p50 / p99 | "
            "added p50 1 / 3 | paired added p50 1 / 3 | added p99 1 / 3 | proxy CPU ms per "
            "1000 req 1 / 3 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in routing["rows"]:
            if "error" in row:
                lines.append(f"| GET /ari/{row['request']} | FAILED: {row['error']} |||||||| ")
                continue
            m = row["ms"]
            lines.append(
                f"| GET /ari/{row['request']} | {m['direct']['n']} | "
                f"{_pair(m['direct'], 'p50', 'p99', 3)} | "
                f"{_pair(m.get('proxy_1'), 'p50', 'p99', 3)} | "
                f"{_pair(m['proxy_3'], 'p50', 'p99', 3)} | {_both(row['added_p50_ms'])} | "
                f"{_both(row['paired_added_p50_ms'])} | {_both(row['added_p99_ms'])} | "
                f"{_both(row['proxy_cpu_ms_per_1000'], 0)} |"
            )
        first = routing.get("first_lookup") or {}
        if first:
            lines += [
                "",
                "First request for a held channel through the 3-server proxy, before any "
                "warm-up (one httpx GET, then a second): "
                + "; ".join(
                    f"{k}: {_f(v['first_ms'])} ms ({v['first_status']}), then "
                    f"{_f(v['second_ms'])} ms"
                    for k, v in first.items()
                )
                + ".",
            ]
        lines.append("")
    relay = f.get("relay")
    if relay:
        eps = relay["events_per_s"]
        lines += [
            f"Events relayed on one subscribeAll socket: [bench-events] x {relay['loops']} "
            f"loop(s) of {relay['iterations']} UserEvent() on each",
            "flooding server; events received / seconds from the first frame to the last "
            "flood's end event.",
            "",
            "| socket | servers flooding | events/s | events per run | end events per run | "
            "floods over on Asterisk after (s) | Asterisk closed the proxy's socket |",
            "|---|---|---|---|---|---|---|",
        ]
        for target, label in (
            ("direct", "direct to Asterisk"),
            ("fleet", f"through the proxy over {servers} servers"),
            ("fleet_split", f"the same, a third of the iterations on each of the {servers}"),
        ):
            runs = relay["runs"].get(target)
            if not runs:
                continue
            ends = ", ".join(f"{x['ends']}/{x['expected_ends']}" for x in runs)
            lines.append(
                f"| {label} | {runs[0]['servers'] if runs else '-'} | {_f(eps[target])} | "
                f"{', '.join(str(x['events']) for x in runs)} | "
                f"{ends} | {'; '.join(str(x.get('flood_s')) for x in runs)} | "
                + (
                    "; ".join(str(x.get("upstream_drops")) for x in runs)
                    if target != "direct"
                    else "-"
                )
                + " |"
            )
        share = relay.get("fleet_delivered_share") or {}
        lines += [
            "",
            f"Ratio to direct: {_x(relay['ratio'])} (full floods), "
            f"{_x(relay.get('ratio_split'))} (a third each). Events the 3-server socket "
            f"received / what the floods send (from the direct runs' count): "
            f"{_pct(share.get('fleet'))}, {_pct(share.get('fleet_split'))}. A run whose end",
            "events did not all arrive counts the events up to the last end that did.",
        ]
        for target, runs in relay["runs"].items():
            for x in runs:
                if not x.get("complete", True) or any(x.get("channels_left", [])):
                    lines.append(
                        f"- {target}: {x['error'] or 'ok'}; flood channels left per server "
                        f"{x.get('channels_left')}; probe {x.get('probe', '-')}"
                    )
        lines.append("")
    plog = f.get("proxy_log")
    if plog and (plog["warnings"] or plog["errors"]):
        lines += [
            f"3-server proxy log: {plog['warnings']} warning(s), {plog['errors']} error(s)"
            + (f"; first: {plog['first_warnings'][0]}" if plog["first_warnings"] else ""),
            "",
        ]
    return lines


def _floor_note(round_trip: float | None, trips: float) -> str:
    """What the extra hops alone cost on this machine (the hop floor), for a verdict."""
    if round_trip is None:
        return ""
    return f"; extra hops alone +{round_trip * trips:.2f} ms here"


def _le(a: float | None, b: float | None) -> bool | None:
    if a is None or b is None:
        return None
    return a <= b
