package main

// The store part's server starts, edits and convergence across a fleet
// (see store.go for the run as a whole).

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"atomspherecors/bench/accounts"
)

// storeStarts is 4a's second half: -starts rounds of caddy start with
// the n accounts inline, from the store without a snapshot, and from the
// store with the snapshot, alternated so that the machine's load drifts
// alike over the three.
func (r *runner) storeStarts(ctx context.Context, s *storeRun) error {
	inlineFile, size, err := r.writeConfig("store-inline.json", storeAdmins[0], storeSites[0], inlineHandler(s.n))
	if err != nil {
		return err
	}
	say("inline config: %.1f MB of JSON", float64(size)/1e6)
	storeFile, _, err := r.writeConfig("store-main.json", storeAdmins[0], storeSites[0], storeHandler(s.dir, 0))
	if err != nil {
		return err
	}
	sources := []string{"inline", "store", "snapshot"}
	figs := map[string][]startFig{}
	for round := range r.cfg.starts {
		for _, src := range sources {
			opts, file := caddyOpts{admin: storeAdmins[0]}, storeFile
			switch src {
			case "inline":
				file = inlineFile
			case "snapshot":
				if opts.xdg, err = r.xdgWithSnapshot(s.snapshot); err != nil {
					return err
				}
			}
			name := fmt.Sprintf("store-start-%s-%d", src, round+1)
			fig, p, err := r.timedStart(ctx, s, name, file, opts, storeSites[0], s.last, readyBound)
			if err != nil {
				r.checkf(false, "start "+src, "%v", err)
				if p != nil {
					r.stop(p)
				}
				continue
			}
			if src != "inline" {
				r.checkServes(ctx, s, "start "+src, p.admin, storeSites[0], s.n, s.last)
			}
			say("round %d, %-8s: caddy start %6.2f s, last account allowed %6.2f s after its exec, RSS %4.0f MB",
				round+1, src, fig.start.Seconds(), fig.ready.Seconds(), fig.rss/1e6)
			result(fmt.Sprintf("E2EStore/op=start/source=%s/accounts=%d", src, s.n),
				metric{fig.start.Seconds(), "sec/op"}, metric{fig.ready.Seconds(), "ready-sec/op"}, metric{fig.rss, "rss-B"})
			figs[src] = append(figs[src], fig)
			r.stopWithin(p, stopBound(s.n))
		}
	}
	for _, src := range sources {
		var start, ready, rss []float64
		for _, f := range figs[src] {
			start, ready, rss = append(start, f.start.Seconds()), append(ready, f.ready.Seconds()), append(rss, f.rss)
		}
		line := fmt.Sprintf("caddy start, %-8s (%d of %d starts): returns in %.2f s, last account allowed %.2f s after exec, RSS %.0f MB",
			src, len(figs[src]), r.cfg.starts, median(start), median(ready), median(rss)/1e6)
		say("median %s", line)
		s.sumf("%s", line)
	}
	return nil
}

// storeEdits is 4b: -edits sequential PUTs of random accounts at the
// server that takes them, then the last edit checked with preflights.
func (r *runner) storeEdits(ctx context.Context, s *storeRun) error {
	say("-- 4b. %d sequential PUTs of one account at one server, %d accounts in the store", r.cfg.edits, s.n)
	cfgFile, _, err := r.writeConfig("store-main.json", storeAdmins[0], storeSites[0], storeHandler(s.dir, 0))
	if err != nil {
		return err
	}
	xdg, err := r.xdgWithSnapshot(s.snapshot)
	if err != nil {
		return err
	}
	_, p, err := r.timedStart(ctx, s, "store-edits", cfgFile, caddyOpts{admin: storeAdmins[0], xdg: xdg}, storeSites[0], s.last, readyBound)
	if err != nil {
		r.checkf(false, "store edits", "%v", err)
		if p != nil {
			r.stop(p)
		}
		return nil
	}
	defer r.stop(p)
	cpu0, err := cpuTime(p.pid)
	if err != nil {
		return err
	}
	var lat []float64
	var wrong []string
	prev, target := "", -1
	for k := range r.cfg.edits {
		i := s.pick()
		origin := fmt.Sprintf("https://edit-%d.example", k)
		a, err := adminAt(ctx, p.admin, http.MethodPut, accountRoute(accounts.ID(i)), rulesBody(origin), jsonHeader)
		if err == nil && a.status != http.StatusOK { // 200: it replaced an account
			err = fmt.Errorf("%d %s", a.status, strings.TrimSpace(a.body))
		}
		if err != nil {
			wrong = append(wrong, fmt.Sprintf("PUT %d (%s): %v", k+1, accounts.ID(i), err))
			continue
		}
		lat = append(lat, a.took.Seconds())
		prev, target = s.origin(i), i
		s.cur[i], s.lastEdit = origin, i
	}
	cpu1, err := cpuTime(p.pid)
	if err != nil {
		return err
	}
	r.checkf(len(wrong) == 0, "store edits", "%d of %d PUTs answered 200%s", len(lat), r.cfg.edits, firstOf(wrong))
	if len(lat) == 0 {
		return nil
	}
	cpuPer := (cpu1 - cpu0).Seconds() / float64(len(lat))
	p50, p99, mx := percentile(lat, 50), percentile(lat, 99), percentile(lat, 100)
	say("PUT of one account: p50 %.1f ms, p99 %.1f ms, max %.1f ms; Caddy CPU %.2f ms per edit (%.2f s over %d edits, its polls included)",
		1000*p50, 1000*p99, 1000*mx, 1000*cpuPer, (cpu1 - cpu0).Seconds(), len(lat))
	result(fmt.Sprintf("E2EStore/op=edit/source=store/accounts=%d", s.n),
		metric{p50, "p50-sec/op"}, metric{p99, "p99-sec/op"}, metric{mx, "max-sec/op"}, metric{cpuPer, "cpu-sec/op"})
	s.sumf("store: PUT of one account (%d sequential edits): p50 %.1f ms, p99 %.1f ms; Caddy CPU %.2f ms per edit", len(lat), 1000*p50, 1000*p99, 1000*cpuPer)
	// the server that took it serves it from its next request
	r.expectPreflightAt(ctx, s.probe, storeSites[0], "store edits", target, s.cur[target], true)
	r.expectPreflightAt(ctx, s.probe, storeSites[0], "store edits", target, prev, false)
	return nil
}

// inlineSizes are the inline configs of 4b's comparison: 1000, 10000
// and n accounts, those not above n.
func inlineSizes(n int) []int {
	var out []int
	for _, m := range []int{1000, 10000, n} {
		if m <= n && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

// inlineEdits is 4b's comparison: -inline-edits PATCHes of one account
// of an inline config through Caddy's /config/ API (a full reload each),
// at each of inlineSizes.
func (r *runner) inlineEdits(ctx context.Context, s *storeRun) error {
	say("-- 4b. inline accounts: %d admin-API PATCHes of one account (each a config reload), at %v accounts", r.cfg.inlineEdits, inlineSizes(s.n))
	for _, m := range inlineSizes(s.n) {
		cfgFile, _, err := r.writeConfig(fmt.Sprintf("store-inline-%d.json", m), storeAdmins[0], storeSites[0], inlineHandler(m))
		if err != nil {
			return err
		}
		p, _, err := r.startCaddyOpts(ctx, fmt.Sprintf("inline-edits-%d", m), cfgFile, caddyOpts{admin: storeAdmins[0]})
		if err != nil {
			r.checkf(false, "inline edits", "caddy start with %d accounts: %v", m, err)
			if p != nil {
				r.stop(p)
			}
			continue
		}
		target := m / 2
		cpu0, err := cpuTime(p.pid)
		if err != nil {
			r.stop(p)
			return err
		}
		var lat []float64
		var wrong []string
		origins := []string{accounts.Origins(target)[0]}
		for k := range r.cfg.inlineEdits {
			origin := fmt.Sprintf("https://inline-edit-%d.example", k)
			a, err := adminAt(ctx, p.admin, http.MethodPatch, editPath(accounts.ID(target)), rulesBody(origin), jsonHeader)
			if err == nil && a.status != http.StatusOK {
				err = fmt.Errorf("%d %s", a.status, strings.TrimSpace(a.body))
			}
			if err != nil {
				wrong = append(wrong, fmt.Sprintf("PATCH %d: %v", k+1, err))
				continue
			}
			lat = append(lat, a.took.Seconds())
			origins = append(origins, origin)
		}
		cpu1, err := cpuTime(p.pid)
		if err != nil {
			r.stop(p)
			return err
		}
		r.checkf(len(wrong) == 0, "inline edits", "%d accounts: %d of %d PATCHes answered 200%s", m, len(lat), r.cfg.inlineEdits, firstOf(wrong))
		if len(lat) > 0 {
			cpuPer := (cpu1 - cpu0).Seconds() / float64(len(lat))
			say("%7d accounts inline: PATCH of one account: median %.3f s, max %.3f s; Caddy CPU %.3f s per edit",
				m, median(lat), percentile(lat, 100), cpuPer)
			result(fmt.Sprintf("E2EStore/op=edit/source=inline/accounts=%d", m),
				metric{median(lat), "p50-sec/op"}, metric{percentile(lat, 100), "max-sec/op"}, metric{cpuPer, "cpu-sec/op"})
			s.sumf("inline, %7d accounts: PATCH of one account through /config/ (%d edits): median %.3f s; Caddy CPU %.3f s per edit", m, len(lat), median(lat), cpuPer)
			r.expectPreflightAt(ctx, s.probe, storeSites[0], "inline edits", target, origins[len(origins)-1], true)
			r.expectPreflightAt(ctx, s.probe, storeSites[0], "inline edits", target, origins[len(origins)-2], false)
		}
		r.stop(p)
		s.probe.CloseIdleConnections()
	}
	return nil
}

// followed is one edit followed on every server of the fleet.
type followed struct {
	after []time.Duration // from the PUT's answer to each server's first allowing preflight
	ok    []bool          // the server allowed it within convergeBound
	first []bool          // its very first preflight was allowed
}

// follow probes every site with preflights for id from origin, about
// every probeEvery, from t0 until each allows it or convergeBound
// passes.
func follow(ctx context.Context, c *http.Client, sites []string, id, origin string, t0 time.Time) followed {
	f := followed{make([]time.Duration, len(sites)), make([]bool, len(sites)), make([]bool, len(sites))}
	var wg sync.WaitGroup
	for j, site := range sites {
		wg.Go(func() {
			for try := 0; ; try++ {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				a, err := preflight(pctx, c, site, id, origin)
				cancel()
				if err == nil && isAllowed(a, origin) {
					f.after[j], f.ok[j], f.first[j] = time.Since(t0), true, try == 0
					return
				}
				if ctx.Err() != nil || time.Since(t0) > convergeBound {
					return
				}
				time.Sleep(probeEvery)
			}
		})
	}
	wg.Wait()
	return f
}

// storeConverge is 4c: three servers share the store, with the default
// poll interval; -converge-edits PUTs round-robin over their admin
// routes, each followed until all three serve it.
func (r *runner) storeConverge(ctx context.Context, s *storeRun) error {
	const servers = 3
	say("-- 4c. convergence: %d servers sharing the store (default poll interval), %d PUTs round-robin after random pauses of 0 to %s, each followed with preflights every ~%s on every server",
		servers, r.cfg.convergeEdits, defaultPoll, probeEvery)
	var procs []*proc
	defer func() {
		for _, p := range procs {
			r.stopWithin(p, stopBound(s.n))
		}
	}()
	for j := range servers {
		cfgFile, _, err := r.writeConfig(fmt.Sprintf("store-fleet-%d.json", j+1), storeAdmins[j], storeSites[j], storeHandler(s.dir, 0))
		if err != nil {
			return err
		}
		xdg, err := r.xdgWithSnapshot(s.snapshot)
		if err != nil {
			return err
		}
		fig, p, err := r.timedStart(ctx, s, fmt.Sprintf("store-fleet-%d", j+1), cfgFile, caddyOpts{admin: storeAdmins[j], xdg: xdg}, storeSites[j], s.last, readyBound)
		if p != nil {
			procs = append(procs, p)
		}
		if err != nil {
			r.checkf(false, "fleet", "server %d: %v", j+1, err)
			return nil
		}
		say("server %d (admin %s, site %s) started from a snapshot copy: last account allowed after %.2f s", j+1, storeAdmins[j], storeSites[j], fig.ready.Seconds())
	}
	sites := storeSites[:servers]
	if s.lastEdit >= 0 {
		// the snapshot predates 4b's edits: each server catches up from the log
		id, origin := accounts.ID(s.lastEdit), s.cur[s.lastEdit]
		f := follow(ctx, s.probe, sites, id, origin, time.Now())
		r.checkf(!slices.Contains(f.ok, false), "fleet", "every server serves 4b's last edit (%s from %s), started from an older snapshot: %v", id, origin, f.ok)
	}

	var conv, put []float64
	var never, late, over int
	var wrong []string
	// every edit, for a closer look: when it was acknowledged, by which
	// server, and when each server served it
	var csv strings.Builder
	csv.WriteString("edit,ack_s,server,account,put_ms")
	for j := range servers {
		fmt.Fprintf(&csv, ",server%d_ms", j+1)
	}
	csv.WriteString("\n")
	begin := time.Now()
	for k := range r.cfg.convergeEdits {
		// An edit sent as soon as the last one converged would come just
		// after the slowest server's poll, every time, and wait a whole
		// interval for it: a random pause puts edits at random moments of
		// the servers' poll cycles, as edits come in practice.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(s.rng.Int64N(int64(defaultPoll)))):
		}
		j := k % servers
		i := s.pick()
		origin := fmt.Sprintf("https://conv-%d.example", k)
		a, err := adminAt(ctx, storeAdmins[j], http.MethodPut, accountRoute(accounts.ID(i)), rulesBody(origin), jsonHeader)
		t0 := time.Now()
		if err == nil && a.status != http.StatusOK {
			err = fmt.Errorf("%d %s", a.status, strings.TrimSpace(a.body))
		}
		if err != nil {
			wrong = append(wrong, fmt.Sprintf("PUT %d to server %d: %v", k+1, j+1, err))
			continue
		}
		put = append(put, a.took.Seconds())
		s.cur[i], s.lastEdit = origin, i
		f := follow(ctx, s.probe, sites, accounts.ID(i), origin, t0)
		fmt.Fprintf(&csv, "%d,%.3f,%d,%s,%.2f", k+1, t0.Sub(begin).Seconds(), j+1, accounts.ID(i), 1000*a.took.Seconds())
		for m := range servers {
			if f.ok[m] {
				fmt.Fprintf(&csv, ",%.1f", 1000*f.after[m].Seconds())
			} else {
				csv.WriteString(",")
			}
		}
		csv.WriteString("\n")
		if !f.first[j] {
			late++
		}
		if slices.Contains(f.ok, false) {
			never++
			wrong = append(wrong, fmt.Sprintf("edit %d (%s from %s, PUT to server %d) not served within %s by servers %v", k+1, accounts.ID(i), origin, j+1, convergeBound, f.ok))
			continue
		}
		conv = append(conv, slices.Max(f.after).Seconds())
		if slices.Max(f.after) > defaultPoll {
			over++
		}
	}
	csvFile, err := r.writeWork("store-converge.csv", []byte(csv.String()))
	if err != nil {
		return err
	}
	r.checkf(never == 0 && len(wrong) == 0, "convergence", "%d of %d edits served by all %d servers within %s%s",
		len(conv), r.cfg.convergeEdits, servers, convergeBound, firstOf(wrong))
	r.checkf(late == 0, "convergence", "the server that took an edit allowed it on its first preflight after the PUT's answer in %d of %d edits",
		len(put)-late, len(put))
	if len(conv) > 0 {
		p50, p99, mx := percentile(conv, 50), percentile(conv, 99), percentile(conv, 100)
		say("convergence (PUT answered -> the last of the %d servers allows the new origin), %d edits: p50 %.0f ms, p99 %.0f ms, max %.0f ms; never converged: %d",
			servers, len(conv), 1000*p50, 1000*p99, 1000*mx, never)
		say("edits that took longer than the poll interval (%s) to converge: %d; every edit's times in %s", defaultPoll, over, csvFile)
		say("PUT latency at the servers that took them: p50 %.1f ms, p99 %.1f ms", 1000*percentile(put, 50), 1000*percentile(put, 99))
		result(fmt.Sprintf("E2EStore/op=converge/servers=%d/accounts=%d", servers, s.n),
			metric{p50, "p50-sec"}, metric{p99, "p99-sec"}, metric{mx, "max-sec"}, metric{float64(never), "never"},
			metric{percentile(put, 50), "put-p50-sec/op"}, metric{percentile(put, 99), "put-p99-sec/op"})
		s.sumf("convergence over %d servers, default poll 1s (%d edits): p50 %.0f ms, p99 %.0f ms, max %.0f ms, never %d; PUT p50 %.1f ms, p99 %.1f ms",
			servers, len(conv), 1000*p50, 1000*p99, 1000*mx, never, 1000*percentile(put, 50), 1000*percentile(put, 99))
	}
	// and every server ends at the same change of the store
	var seqs []uint64
	deadline := time.Now().Add(convergeBound)
	for {
		seqs = seqs[:0]
		for _, p := range procs {
			st, err := getStatus(ctx, p.admin)
			if err != nil {
				seqs = append(seqs, 0)
				continue
			}
			seqs = append(seqs, st.Seq)
		}
		if (seqs[0] > 0 && !slices.ContainsFunc(seqs, func(q uint64) bool { return q != seqs[0] })) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.checkf(seqs[0] > 0 && !slices.ContainsFunc(seqs, func(q uint64) bool { return q != seqs[0] }), "convergence", "every server reports the same last change read (seq): %v", seqs)
	for j, p := range procs {
		r.checkServes(ctx, s, "convergence", p.admin, storeSites[j], s.n, s.last)
	}
	return nil
}
