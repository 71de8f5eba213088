package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
