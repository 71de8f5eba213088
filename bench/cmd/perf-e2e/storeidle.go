package main

// The store part's idle polls and its 10^6-account run, and the
// helpers of its figures (see store.go for the run as a whole).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"atomspherecors/bench/accounts"
)

// idleFig is one idle Caddy's CPU over the window.
type idleFig struct {
	name         string
	cpu, sched   time.Duration // utime+stime, and the threads' run time
	gcs          int           // GC cycles (GODEBUG=gctrace=1 lines in its log)
	store        bool
	accounts     int
	perPoll      float64 // seconds of cpu per poll interval
	schedPerPoll float64
}

// storeIdle is 4d: the CPU of idle servers polling every idlePoll, with
// a store of 1000 accounts and of n, and of the same config without the
// store (1 account inline), over the same -idle window.
func (r *runner) storeIdle(ctx context.Context, s *storeRun) error {
	polls := int(r.cfg.idle / idlePoll)
	say("-- 4d. idle polling: 3 idle servers side by side, store polled every %s, CPU over %s (%d polls)", idlePoll, r.cfg.idle, polls)
	small := filepath.Join(r.work, "store-1000")
	if err := os.MkdirAll(small, 0o755); err != nil {
		return err
	}
	const smallN = 1000
	type server struct {
		name     string
		handler  map[string]any
		snapshot bool
		store    bool
		accounts int
	}
	servers := []server{
		{"no store (1 account inline)", inlineHandler(1), false, false, 1},
		{fmt.Sprintf("store of %d accounts", smallN), storeHandler(small, idlePoll), false, true, smallN},
		{fmt.Sprintf("store of %d accounts", s.n), storeHandler(s.dir, idlePoll), true, true, s.n},
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			r.stopWithin(p, stopBound(s.n))
		}
	}()
	for j, sv := range servers {
		cfgFile, _, err := r.writeConfig(fmt.Sprintf("store-idle-%d.json", j+1), storeAdmins[j], storeSites[j], sv.handler)
		if err != nil {
			return err
		}
		opts := caddyOpts{admin: storeAdmins[j], env: []string{"GODEBUG=gctrace=1"}}
		if sv.snapshot {
			if opts.xdg, err = r.xdgWithSnapshot(s.snapshot); err != nil {
				return err
			}
		}
		p, _, err := r.startCaddyOpts(ctx, fmt.Sprintf("store-idle-%d", j+1), cfgFile, opts)
		if p != nil {
			procs = append(procs, p)
		}
		if err != nil {
			r.checkf(false, "idle", "%s: %v", sv.name, err)
			return nil
		}
	}
	if _, err := r.importAccounts(ctx, procs[1], 0, smallN); err != nil {
		r.checkf(false, "idle", "import of %d accounts: %v", smallN, err)
		return nil
	}
	// settled: every store read to its head, its snapshot written (at the
	// first poll after a change), a few more polls
	for j, sv := range servers {
		last := sv.accounts - 1
		ok, why := waitAllowed(ctx, s.probe, storeSites[j], accounts.ID(last), accounts.Origins(last)[0], time.Now().Add(readyBound))
		if !ok {
			r.checkf(false, "idle", "%s: the preflight of %s not allowed: %s", sv.name, accounts.ID(last), why)
			return nil
		}
	}
	settle := 3 * time.Second
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}

	figs := make([]idleFig, len(servers))
	cpu0 := make([]time.Duration, len(servers))
	sched0 := make([]time.Duration, len(servers))
	log0 := make([]int64, len(servers))
	for j, p := range procs {
		var err1, err2 error
		cpu0[j], err1 = cpuTime(p.pid)
		sched0[j], err2 = schedTime(p.pid)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		log0[j] = fileSize(p.log)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(r.cfg.idle):
	}
	for j, p := range procs {
		cpu1, err1 := cpuTime(p.pid)
		sched1, err2 := schedTime(p.pid)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		f := idleFig{name: servers[j].name, cpu: cpu1 - cpu0[j], sched: sched1 - sched0[j], gcs: gcLines(p.log, log0[j]),
			store: servers[j].store, accounts: servers[j].accounts}
		f.perPoll, f.schedPerPoll = f.cpu.Seconds()/float64(polls), f.sched.Seconds()/float64(polls)
		figs[j] = f
	}
	base := figs[0]
	for _, f := range figs {
		say("%-28s CPU over %s: %6.0f ms (utime+stime), %7.1f ms (threads' run time); per %s: %7.1f µs, %7.1f µs; GC cycles in the window: %d",
			f.name, r.cfg.idle, 1000*f.cpu.Seconds(), 1000*f.sched.Seconds(), idlePoll, 1e6*f.perPoll, 1e6*f.schedPerPoll, f.gcs)
		src := "inline"
		if f.store {
			src = "store"
		}
		result(fmt.Sprintf("E2EStore/op=idle/source=%s/accounts=%d", src, f.accounts),
			metric{f.perPoll, "cpu-sec/poll"}, metric{f.schedPerPoll, "sched-cpu-sec/poll"}, metric{float64(f.gcs), "gcs"})
	}
	for _, f := range figs[1:] {
		say("%-28s the poll's own share, over the server without a store: %.1f µs per poll (utime+stime), %.1f µs (threads' run time)",
			f.name, 1e6*(f.perPoll-base.perPoll), 1e6*(f.schedPerPoll-base.schedPerPoll))
	}
	sm, big := figs[1], figs[2]
	ratio, schedRatio := safeRatio(big.perPoll, sm.perPoll), safeRatio(big.schedPerPoll, sm.schedPerPoll)
	say("CPU per poll, %d accounts over %d: %.2f (utime+stime), %.2f (threads' run time)", s.n, smallN, ratio, schedRatio)
	s.sumf("idle, polling every %s, CPU per poll (threads' run time; utime+stime in 10 ms steps): %d accounts %.1f µs (%.0f µs), %d accounts %.1f µs (%.0f µs), ratio %.2f; no store: %.1f µs (%.0f µs) per %s",
		idlePoll, smallN, 1e6*sm.schedPerPoll, 1e6*sm.perPoll, s.n, 1e6*big.schedPerPoll, 1e6*big.perPoll, schedRatio,
		1e6*base.schedPerPoll, 1e6*base.perPoll, idlePoll)
	for j, sv := range servers[1:] {
		r.checkServes(ctx, s, "idle", storeAdmins[j+1], storeSites[j+1], sv.accounts, sv.accounts-1)
	}
	return nil
}

// storeHuge is 4e: -huge accounts imported into a store of their own,
// then caddy start from the snapshot and without one.
func (r *runner) storeHuge(ctx context.Context, s *storeRun) error {
	n := r.cfg.huge
	say("-- 4e. %d accounts: POST /import, then caddy start from the snapshot and without one", n)
	dir := filepath.Join(r.work, "store-huge")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfgFile, _, err := r.writeConfig("store-huge.json", storeAdmins[3], storeSites[3], storeHandler(dir, 0))
	if err != nil {
		return err
	}
	opts := caddyOpts{admin: storeAdmins[3]}
	p, _, err := r.startCaddyOpts(ctx, "store-huge-import", cfgFile, opts)
	if err != nil {
		r.checkf(false, "huge import", "caddy start with an empty store: %v", err)
		return err
	}
	fig, err := r.importAccounts(ctx, p, 0, n)
	r.checkf(err == nil, "huge import", "%d accounts imported, all created: %v", n, errOr(err, "yes"))
	if err != nil {
		r.stop(p)
		return nil
	}
	say("import of %d accounts: %s in %d POST(s) of up to %d (Caddy read and validated the bodies in %s); Caddy CPU %.1f s; peak RSS %.0f MB",
		n, fig.took.Round(time.Millisecond), fig.posts, r.cfg.importLines, fig.read.Round(time.Millisecond), fig.cpu.Seconds(), fig.peakRSS/1e6)
	result(fmt.Sprintf("E2EStore/op=import/accounts=%d", n), metric{fig.took.Seconds(), "sec/op"},
		metric{fig.read.Seconds(), "read-sec/op"}, metric{fig.cpu.Seconds(), "cpu-sec/op"}, metric{fig.peakRSS, "peak-rss-B"})
	s.sumf("POST /import of %d accounts (%d POSTs): %.1f s, Caddy CPU %.1f s, peak RSS %.0f MB", n, fig.posts, fig.took.Seconds(), fig.cpu.Seconds(), fig.peakRSS/1e6)
	clean := r.stopWithin(p, stopBound(n))
	snapshot := snapshotIn(p.xdg)
	r.checkf(clean && snapshot != "", "huge snapshot", "the importing Caddy stopped through the admin API (%v) and wrote its snapshot %q", clean, snapshot)
	if snapshot == "" {
		return nil
	}
	for _, src := range []string{"snapshot", "store"} {
		o := opts
		if src == "snapshot" {
			if o.xdg, err = r.xdgWithSnapshot(snapshot); err != nil {
				return err
			}
		}
		f, p, err := r.timedStart(ctx, s, "store-huge-start-"+src, cfgFile, o, storeSites[3], n-1, hugeBound)
		if err != nil {
			r.checkf(false, "huge start "+src, "%v", err)
		} else {
			say("%d accounts, %-8s: caddy start %.2f s, last account allowed %.2f s after its exec, RSS %.0f MB", n, src, f.start.Seconds(), f.ready.Seconds(), f.rss/1e6)
			result(fmt.Sprintf("E2EStore/op=start/source=%s/accounts=%d", src, n),
				metric{f.start.Seconds(), "sec/op"}, metric{f.ready.Seconds(), "ready-sec/op"}, metric{f.rss, "rss-B"})
			s.sumf("caddy start, %-8s %d accounts: returns in %.2f s, last account allowed %.2f s after exec, RSS %.0f MB", src, n, f.start.Seconds(), f.ready.Seconds(), f.rss/1e6)
			r.checkServes(ctx, s, "huge start "+src, p.admin, storeSites[3], n, n-1)
		}
		if p != nil {
			r.stopWithin(p, stopBound(n))
		}
		s.probe.CloseIdleConnections()
	}
	return nil
}

// percentile is the p-th percentile of xs (p from 0 to 100), linear
// between the closest ranks: 50 is the median, 100 the maximum; 0 for
// none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(rank))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	if lo < 0 {
		return s[0]
	}
	return s[lo] + (rank-float64(lo))*(s[lo+1]-s[lo])
}

// gcLines counts the lines of GODEBUG=gctrace=1 ("gc N @...") in a log
// after offset.
func gcLines(path string, offset int64) int {
	b, err := os.ReadFile(path)
	if err != nil || offset > int64(len(b)) {
		return 0
	}
	return countGCLines(b[offset:])
}

// countGCLines counts the lines that start with "gc " and a number.
func countGCLines(b []byte) int {
	n := 0
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "gc ")
		if ok && len(rest) > 0 && rest[0] >= '0' && rest[0] <= '9' {
			n++
		}
	}
	return n
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func safeRatio(a, b float64) float64 {
	if b == 0 {
		return math.NaN()
	}
	return a / b
}

// errOr is err's text, or ok when err is nil.
func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

// firstOf is "; " and the first of problems, and how many there are.
func firstOf(problems []string) string {
	switch len(problems) {
	case 0:
		return ""
	case 1:
		return "; " + problems[0]
	}
	return fmt.Sprintf("; %s (and %d more)", problems[0], len(problems)-1)
}
