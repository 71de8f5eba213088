package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"atomspherecors/bench/accounts"
)

// Part 4: the rules store of docs/store.md, end to end. Its Caddy
// processes take their accounts from a file_system storage in the work
// directory, edited through the admin routes /atomsphere_cors/<name>/...

const (
	storeName = "main"
	// defaultPoll is the module's default poll interval (docs/store.md).
	defaultPoll = time.Second
	// idlePoll is the poll interval of the idle servers (4d); the others
	// keep the default, 1s.
	idlePoll = 100 * time.Millisecond
	// probeEvery is the pause between two preflights of a wait.
	probeEvery = 5 * time.Millisecond
	// convergeBound bounds the wait for the three servers to serve one
	// edit; an edit not served by all three by then never converged.
	convergeBound = 10 * time.Second
	// readyBound bounds the wait, from the exec of `caddy start`, for the
	// last account's preflight to be allowed (-huge: hugeBound). Without
	// a snapshot, a store that the first read (bounded at 10 s while
	// Caddy starts) did not load is read by polls bounded at 30 s each,
	// retried with backoff: ten minutes is ten tries or more.
	readyBound = 5 * time.Minute
	hugeBound  = 10 * time.Minute
)

// Addresses of part 4's processes, up to four at once: index i is the
// admin API and the site of the i-th.
var (
	storeAdmins = []string{"127.0.0.1:2981", "127.0.0.1:2982", "127.0.0.1:2983", "127.0.0.1:2984"}
	storeSites  = []string{"127.0.0.1:9321", "127.0.0.1:9322", "127.0.0.1:9323", "127.0.0.1:9324"}
)

// storeHandler is atomsphere_cors taking its accounts from the store
// named storeName in a file_system storage at root; poll 0 keeps the
// default interval (the config then has no poll_interval).
func storeHandler(root string, poll time.Duration) map[string]any {
	st := map[string]any{"name": storeName, "storage": map[string]any{"module": "file_system", "root": root}}
	if poll > 0 {
		st["poll_interval"] = poll.String()
	}
	return map[string]any{"handler": "atomsphere_cors", "store": st}
}

func storeRoute() string            { return "/atomsphere_cors/" + storeName }
func accountRoute(id string) string { return storeRoute() + "/accounts/" + id }

// rulesBody is one account's rules as the admin routes take them: one
// origin allowed GET and POST.
func rulesBody(origin string) []byte {
	return []byte(`[{"origin":"` + origin + `","methods":["GET","POST"]}]`)
}

var jsonHeader = http.Header{"Content-Type": {"application/json"}}

// storeStatus is the part of GET /atomsphere_cors/<name> read here.
type storeStatus struct {
	Serving   string `json:"serving"`
	Accounts  int    `json:"accounts"`
	Seq       uint64 `json:"seq"`
	Stale     bool   `json:"stale"`
	LastError string `json:"last_error"`
}

func getStatus(ctx context.Context, admin string) (storeStatus, error) {
	var st storeStatus
	a, err := adminAt(ctx, admin, http.MethodGet, storeRoute(), nil, nil)
	if err != nil {
		return st, err
	}
	if a.status != http.StatusOK {
		return st, fmt.Errorf("GET %s: %d %s", storeRoute(), a.status, strings.TrimSpace(a.body))
	}
	return st, json.Unmarshal([]byte(a.body), &st)
}

// storeRun is what the steps of part 4 share.
type storeRun struct {
	n        int
	dir      string // the file_system storage of the n accounts
	snapshot string // the snapshot the importing Caddy wrote
	last     int    // n-1, never edited: its first origin shows a server serves the accounts
	rng      *rand.Rand
	cur      map[int]string // edited account -> the origin it allows now
	lastEdit int            // the account edited last, -1 before any
	probe    *http.Client   // keeps connections: thousands of probes
	summary  []string       // the report's closing table
}

// pick returns a random account other than the last.
func (s *storeRun) pick() int { return s.rng.IntN(s.n - 1) }

// origin is the origin account i allows now (its first, when not edited).
func (s *storeRun) origin(i int) string {
	if o, ok := s.cur[i]; ok {
		return o
	}
	return accounts.Origins(i)[0]
}

func (s *storeRun) sumf(format string, args ...any) {
	s.summary = append(s.summary, fmt.Sprintf(format, args...))
}

// store is part 4.
func (r *runner) store(ctx context.Context) error {
	n := r.cfg.big
	say("== 4. the rules store (docs/store.md): %d accounts of 3 rules, file_system storage in %s", n, r.work)
	if err := ensureFree(append(slices.Clone(storeAdmins), storeSites...)...); err != nil {
		return err
	}
	s := &storeRun{
		n: n, dir: filepath.Join(r.work, "store-main"), last: n - 1,
		rng: rand.New(rand.NewPCG(1, 2)), cur: map[int]string{}, lastEdit: -1,
		probe: &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}},
	}
	defer s.probe.CloseIdleConnections()
	steps := []func(context.Context, *storeRun) error{
		r.storeImport, r.storeStarts, r.storeEdits, r.inlineEdits, r.storeConverge, r.storeIdle,
	}
	if r.cfg.huge > 0 {
		steps = append(steps, r.storeHuge)
	}
	for _, step := range steps {
		if err := step(ctx, s); err != nil {
			return err
		}
		s.probe.CloseIdleConnections() // the next step's servers are new
	}
	say("-- the rules store, in short (%d accounts unless said; medians over the repeats):", n)
	for _, line := range s.summary {
		say("   %s", line)
	}
	return nil
}

// writeWork writes a file of the work directory and returns its path.
func (r *runner) writeWork(name string, b []byte) (string, error) {
	path := filepath.Join(r.work, name)
	return path, os.WriteFile(path, b, 0o644)
}

// writeConfig writes siteConfig(admin, site, handler) to a file.
func (r *runner) writeConfig(name, admin, site string, handler map[string]any) (string, int, error) {
	b, err := siteConfig(admin, site, handler)
	if err != nil {
		return "", 0, err
	}
	path, err := r.writeWork(name, b)
	return path, len(b), err
}

// waitAllowed sends preflights for account id from origin to site, about
// every probeEvery, until one is allowed (true) or deadline passes
// (false, with the last answer).
func waitAllowed(ctx context.Context, c *http.Client, site, id, origin string, deadline time.Time) (bool, string) {
	last := "no preflight sent"
	for {
		d := time.Now().Add(2 * time.Second)
		if deadline.Before(d) {
			d = deadline
		}
		pctx, cancel := context.WithDeadline(ctx, d)
		a, err := preflight(pctx, c, site, id, origin)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case isAllowed(a, origin):
			return true, ""
		default:
			last = fmt.Sprintf("%d, Access-Control-Allow-Origin %q", a.status, a.header.Get("Access-Control-Allow-Origin"))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false, last
		}
		time.Sleep(probeEvery)
	}
}

// startFig is one `caddy start`: until it returned, until the last
// account's preflight was allowed (both from its exec), and the RSS then.
type startFig struct {
	start, ready time.Duration
	rss          float64
}

// timedStart runs `caddy start` and waits until account last's
// preflight from its first origin is allowed at site, within bound.
func (r *runner) timedStart(ctx context.Context, s *storeRun, name, configFile string, opts caddyOpts, site string, last int, bound time.Duration) (startFig, *proc, error) {
	t0 := time.Now()
	p, took, err := r.startCaddyOpts(ctx, name, configFile, opts)
	if err != nil {
		return startFig{}, p, err
	}
	ok, why := waitAllowed(ctx, s.probe, site, accounts.ID(last), accounts.Origins(last)[0], t0.Add(bound))
	ready := time.Since(t0)
	if !ok {
		return startFig{}, p, fmt.Errorf("%s: the preflight of %s from %s not allowed within %s of the start: %s",
			name, accounts.ID(last), accounts.Origins(last)[0], bound, why)
	}
	return startFig{took, ready, rssBytes(p.pid)}, p, nil
}

// snapshotIn is the snapshot of the store a Caddy with XDG dirs in xdg
// wrote ("" when none): $XDG_DATA_HOME/caddy/atomsphere_cors/<name>-<hash>.ndjson.
func snapshotIn(xdg string) string {
	m, _ := filepath.Glob(filepath.Join(xdg, "data", "caddy", "atomsphere_cors", storeName+"-*.ndjson"))
	if len(m) != 1 {
		return ""
	}
	return m[0]
}

// xdgWithSnapshot makes the XDG dirs of a new Caddy, with a copy of
// snapshot where that Caddy looks for it.
func (r *runner) xdgWithSnapshot(snapshot string) (string, error) {
	xdg, err := r.newXDG()
	if err != nil {
		return "", err
	}
	dst := filepath.Join(xdg, "data", "caddy", "atomsphere_cors", filepath.Base(snapshot))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	in, err := os.Open(snapshot)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", err
	}
	return xdg, out.Close()
}

// countLines counts the lines of a file.
func countLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	buf := make([]byte, 1<<16)
	for {
		k, err := f.Read(buf)
		n += bytes.Count(buf[:k], []byte{'\n'})
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// stopBound is how long a Caddy with a store of n accounts gets to stop
// by itself: it writes its snapshot as it stops.
func stopBound(n int) time.Duration {
	return time.Minute + time.Duration(n)*200*time.Microsecond
}

// importFig is an import of accounts into a running Caddy.
type importFig struct {
	took    time.Duration // wall time of every POST
	read    time.Duration // of which until Caddy had read (and validated) the bodies
	cpu     time.Duration // Caddy's CPU time over it
	peakRSS float64       // Caddy's peak RSS (VmHWM) after it
	posts   int
}

// importAnswer is POST /import's answer.
type importAnswer struct {
	Imported int `json:"imported"`
	Created  int `json:"created"`
	Replaced int `json:"replaced"`
}

// importAccounts imports accounts lo to hi-1 into p's store, in POSTs
// of -import-lines, and checks the answers: every account created.
func (r *runner) importAccounts(ctx context.Context, p *proc, lo, hi int) (importFig, error) {
	var fig importFig
	cpu0, err := cpuTime(p.pid)
	if err != nil {
		return fig, err
	}
	t0 := time.Now()
	for from := lo; from < hi; from += r.cfg.importLines {
		to := min(from+r.cfg.importLines, hi)
		ans, read, err := postImport(ctx, p.admin, from, to)
		fig.posts++
		fig.read += read
		if err == nil && (ans.Imported != to-from || ans.Created != to-from) {
			err = fmt.Errorf("answered %+v, want %d imported, all created", ans, to-from)
		}
		if err != nil {
			return fig, fmt.Errorf("POST %s/import of accounts %d to %d: %v", storeRoute(), from, to-1, err)
		}
	}
	fig.took = time.Since(t0)
	cpu1, err := cpuTime(p.pid)
	fig.cpu, fig.peakRSS = cpu1-cpu0, peakRSSBytes(p.pid)
	return fig, err
}

// postImport sends accounts lo to hi-1 as one NDJSON body, written as it
// is sent, and returns the answer and how long Caddy took to read the
// body (it validates each line as it reads; the writes follow).
func postImport(ctx context.Context, admin string, lo, hi int) (importAnswer, time.Duration, error) {
	var ans importAnswer
	pr, pw := io.Pipe()
	sent := make(chan time.Time, 1)
	t0 := time.Now()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<16)
		var err error
		for i := lo; i < hi && err == nil; i++ {
			var b []byte
			b, err = json.Marshal(map[string]any{"account": accounts.ID(i), "rules": accounts.Rules(i)})
			if err == nil {
				_, err = bw.Write(append(b, '\n'))
			}
		}
		if err == nil {
			err = bw.Flush()
		}
		sent <- time.Now()
		pw.CloseWithError(err)
	}()
	// about 1 ms per account on a busy machine; room for five times that
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute+time.Duration(hi-lo)*5*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+storeRoute()+"/import", pr)
	if err != nil {
		return ans, 0, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := client.Do(req)
	pr.CloseWithError(errors.New("answered")) // the writer stops, if it has not
	read := (<-sent).Sub(t0)
	if err != nil {
		return ans, read, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return ans, read, err
	}
	if resp.StatusCode != http.StatusOK {
		return ans, read, fmt.Errorf("%s: %.500s", resp.Status, bytes.TrimSpace(b))
	}
	return ans, read, json.Unmarshal(b, &ans)
}

// checkServes checks, through a Caddy's admin API and site, that it
// serves the store's n accounts: status serving "store", n accounts,
// not stale, and the last account's preflight allowed.
func (r *runner) checkServes(ctx context.Context, s *storeRun, name, admin, site string, n, last int) {
	st, err := getStatus(ctx, admin)
	if err != nil {
		r.checkf(false, name, "status: %v", err)
		return
	}
	a, err := preflight(ctx, s.probe, site, accounts.ID(last), accounts.Origins(last)[0])
	allowed := err == nil && isAllowed(a, accounts.Origins(last)[0])
	r.checkf(st.Serving == "store" && st.Accounts == n && !st.Stale && allowed, name,
		"status serving %q, %d accounts (want %d), stale %v %s; preflight for %s allowed: %v",
		st.Serving, st.Accounts, n, st.Stale, st.LastError, accounts.ID(last), allowed)
}

// storeImport is 4a's first half: a Caddy whose store is empty imports
// the n accounts, then stops, writing its snapshot.
func (r *runner) storeImport(ctx context.Context, s *storeRun) error {
	say("-- 4a. POST /import of %d accounts into an empty store, then caddy start: inline, store without a snapshot, store from the snapshot", s.n)
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	cfgFile, _, err := r.writeConfig("store-main.json", storeAdmins[0], storeSites[0], storeHandler(s.dir, 0))
	if err != nil {
		return err
	}
	p, _, err := r.startCaddyOpts(ctx, "store-import", cfgFile, caddyOpts{admin: storeAdmins[0]})
	if err != nil {
		r.checkf(false, "store import", "caddy start with an empty store: %v", err)
		return err
	}
	fig, err := r.importAccounts(ctx, p, 0, s.n)
	r.checkf(err == nil, "store import", "%d accounts imported, all created: %v", s.n, errOr(err, "yes"))
	if err != nil {
		r.stop(p)
		return err
	}
	say("import of %d accounts: %s in %d POST(s) (Caddy read and validated the body in %s, then wrote); Caddy CPU %.1f s; peak RSS %.0f MB",
		s.n, fig.took.Round(time.Millisecond), fig.posts, fig.read.Round(time.Millisecond), fig.cpu.Seconds(), fig.peakRSS/1e6)
	result(fmt.Sprintf("E2EStore/op=import/accounts=%d", s.n), metric{fig.took.Seconds(), "sec/op"},
		metric{fig.read.Seconds(), "read-sec/op"}, metric{fig.cpu.Seconds(), "cpu-sec/op"}, metric{fig.peakRSS, "peak-rss-B"})
	s.sumf("POST /import of %d accounts: %.1f s (body read and validated in %.1f s), Caddy CPU %.1f s, peak RSS %.0f MB",
		s.n, fig.took.Seconds(), fig.read.Seconds(), fig.cpu.Seconds(), fig.peakRSS/1e6)
	r.checkServes(ctx, s, "store import", p.admin, storeSites[0], s.n, s.last)

	t0 := time.Now()
	clean := r.stopWithin(p, stopBound(s.n))
	say("the importing Caddy stopped in %s (its store writes the snapshot as it stops)", time.Since(t0).Round(time.Millisecond))
	r.checkf(clean, "store snapshot", "the importing Caddy stopped through the admin API")
	s.snapshot = snapshotIn(p.xdg)
	if s.snapshot == "" {
		r.checkf(false, "store snapshot", "no snapshot %s-*.ndjson under %s", storeName, filepath.Join(p.xdg, "data", "caddy", "atomsphere_cors"))
		return errors.New("no snapshot to start from")
	}
	lines, err := countLines(s.snapshot)
	fi, _ := os.Stat(s.snapshot)
	r.checkf(err == nil && lines == s.n+1, "store snapshot", "%s: %d lines (a header and %d accounts), %.1f MB: %v",
		s.snapshot, lines, s.n, float64(fi.Size())/1e6, errOr(err, "ok"))
	return nil
}

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
