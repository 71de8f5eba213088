package atomspherecors

// A fleet of real Caddy processes sharing one file_system store
// (docs/store.md): edits through each server's admin routes, convergence
// checked with real requests on every server, writes under load, and
// faults made for real (the storage directory replaced by a plain file,
// a server killed with SIGKILL while it writes, a corrupt record written
// into the store). One Caddy binary is built per run from
// testdata/caddy; every process gets its own XDG_CONFIG_HOME and
// XDG_DATA_HOME under the test's temporary directory. Ports: HTTP
// 127.0.0.1:9601-9604, admin 127.0.0.1:2961-2964.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
)

// fleetPoll is the servers' poll interval in these tests (1s by default).
const fleetPoll = 250 * time.Millisecond

type fleetServer struct {
	n           int
	admin, base string
	home        string // XDG_CONFIG_HOME and XDG_DATA_HOME live here
	cmd         *exec.Cmd
	waitErr     chan error
	log         *bytes.Buffer
}

type fleet struct {
	t       *testing.T
	bin     string
	storage string
	env     []string // more environment of every server
	servers []*fleetServer
}

func newFleet(t *testing.T) *fleet {
	if testing.Short() {
		t.Skip("builds and runs Caddy processes")
	}
	dir := t.TempDir()
	f := &fleet{t: t, bin: caddyBinary(t), storage: filepath.Join(dir, "store")}
	t.Cleanup(func() {
		for _, s := range f.servers {
			s.kill()
		}
	})
	return f
}

func (f *fleet) config(s *fleetServer) []byte {
	return mustJSON(map[string]any{
		"admin":   map[string]any{"listen": strings.TrimPrefix(s.admin, "http://"), "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": f.storage},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"api": map[string]any{
			"listen":    []string{strings.TrimPrefix(s.base, "http://")},
			"protocols": []string{"h1"},
			"routes": []any{map[string]any{"handle": []any{
				map[string]any{"handler": "atomsphere_cors", "store": map[string]any{"name": "fleet", "poll_interval": fleetPoll.String()}},
				map[string]any{"handler": "static_response", "status_code": 200, "body": "ok"},
			}}},
		}}}},
	})
}

// start runs server n (1-4), with a new home unless it ran before.
func (f *fleet) start(n int, freshHome bool) *fleetServer {
	t := f.t
	t.Helper()
	var s *fleetServer
	for _, o := range f.servers {
		if o.n == n {
			s = o
		}
	}
	if s == nil || freshHome {
		s = &fleetServer{n: n, admin: fmt.Sprintf("http://127.0.0.1:%d", 2960+n), base: fmt.Sprintf("http://127.0.0.1:%d", 9600+n),
			home: t.TempDir()}
		f.servers = append(f.servers, s)
	}
	cfg := filepath.Join(s.home, "caddy.json")
	if err := os.WriteFile(cfg, f.config(s), 0o600); err != nil {
		t.Fatal(err)
	}
	s.log = &bytes.Buffer{}
	s.cmd = exec.Command(f.bin, "run", "--config", cfg)
	s.cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(s.home, "config"),
		"XDG_DATA_HOME="+filepath.Join(s.home, "data"), "HOME="+s.home)
	s.cmd.Env = append(s.cmd.Env, f.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.waitErr = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(s.cmd, s.waitErr)
	for range 200 {
		if st, _ := s.status(t); st != nil {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server %d did not start:\n%s", n, s.log)
	return nil
}

func (s *fleetServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.waitErr
		s.cmd = nil
	}
}

// stop stops a server gracefully (SIGTERM), which writes its snapshot.
func (s *fleetServer) stop(t *testing.T) {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.waitErr:
	case <-time.After(15 * time.Second):
		t.Errorf("server %d did not stop", s.n)
		s.kill()
	}
	s.cmd = nil
}

func (s *fleetServer) call(t testing.TB, method, path, body string) (int, string) {
	t.Helper()
	return storeCall(t, s.admin, method, "/atomsphere_cors/fleet"+path, body)
}

// status is the server's store status, nil while it does not answer.
func (s *fleetServer) status(t testing.TB) (*rulestore.Status, error) {
	res, err := adminClient.Get(s.admin + "/atomsphere_cors/fleet")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var st rulestore.Status
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil || res.StatusCode != 200 {
		return nil, fmt.Errorf("status %d %v", res.StatusCode, err)
	}
	return &st, nil
}

func rulesJSON(origin string, methods ...string) string {
	return string(mustJSON([]policy.Rule{{Origin: origin, Methods: methods}}))
}

// until retries check every 10 ms for at most d.
func until(d time.Duration, check func() error) error {
	return testkit.Until(d, 10*time.Millisecond, check)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func TestStoreFleet(t *testing.T) {
	f := newFleet(t)
	s1, s2, s3 := f.start(1, true), f.start(2, true), f.start(3, true)
	all := []*fleetServer{s1, s2, s3}
	c := newProbeClient()

	// Steady accounts the load uses, imported through server 1.
	var imp strings.Builder
	for i := range 20 {
		fmt.Fprintf(&imp, `{"account":"steady-%d","rules":[{"origin":"https://steady-%d.example","methods":["GET","PUT"]}]}`+"\n", i, i)
	}
	if st, out := s1.call(t, "POST", "/import", imp.String()); st != 200 {
		t.Fatalf("import: %d %s", st, out)
	}

	t.Run("convergence", func(t *testing.T) {
		var edit, conv []time.Duration
		for i := range 30 {
			at, others := all[i%3], []*fleetServer{all[(i+1)%3], all[(i+2)%3]}
			acct, origin := fmt.Sprintf("conv-%d", i), fmt.Sprintf("https://conv-%d.example", i)
			start := time.Now()
			if st, out := at.call(t, "PUT", "/accounts/"+acct, rulesJSON(origin, "GET")); st != http.StatusCreated {
				t.Fatalf("PUT: %d %s", st, out)
			}
			edit = append(edit, time.Since(start))
			if r := send(c, preflightProbe(at.base, acct, origin, "GET", "GET")); r.err != nil {
				t.Errorf("next request at the server that took the edit: %v", r.err)
			}
			for _, o := range others {
				if err := until(5*time.Second, func() error {
					return send(c, preflightProbe(o.base, acct, origin, "GET", "GET")).err
				}); err != nil {
					t.Fatalf("server %d never saw %s: %v", o.n, acct, err)
				}
				conv = append(conv, time.Since(start))
			}
		}
		t.Logf("edit latency at the server that took it: p50 %v p99 %v; convergence on the 2 others (poll %v): p50 %v p99 %v",
			percentile(edit, .5), percentile(edit, .99), fleetPoll, percentile(conv, .5), percentile(conv, .99))
	})

	t.Run("load", func(t *testing.T) {
		const (
			editsPerServer = 70
			budget         = 60 * time.Second
		)
		deadline := time.Now().Add(budget)
		var probes []probe
		for _, s := range all {
			for i := range 4 {
				o := fmt.Sprintf("https://steady-%d.example", i)
				probes = append(probes,
					preflightProbe(s.base, fmt.Sprintf("steady-%d", i), o, "PUT", "GET, PUT"),
					preflightProbe(s.base, fmt.Sprintf("steady-%d", i), o, "DELETE", ""),
					preflightProbe(s.base, fmt.Sprintf("steady-%d", i), "https://evil.example", "GET", ""),
					normalProbe(s.base, fmt.Sprintf("steady-%d", i), o, true, "ok"),
					normalProbe(s.base, fmt.Sprintf("steady-%d", i), "https://evil.example", false, "ok"))
			}
		}
		var stats loadStats
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lc := newProbeClient()
				for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
					select {
					case <-stop:
						return
					default:
					}
					p := probes[(w*7+i)%len(probes)]
					stats.record(p, send(lc, p))
				}
			}()
		}
		var edits atomic.Int64
		var mu sync.Mutex
		var lat []time.Duration
		var ewg sync.WaitGroup
		for k, s := range all {
			ewg.Add(1)
			go func() {
				defer ewg.Done()
				ec := newProbeClient()
				for j := 0; j < editsPerServer && time.Now().Before(deadline); j++ {
					acct := fmt.Sprintf("edit-%d-%d", k, j%10)
					origin := fmt.Sprintf("https://e-%d-%d.example", k, j)
					method, body, want := "PUT", rulesJSON(origin, "GET"), "GET"
					if j%5 == 4 {
						method, body, want = "DELETE", "", ""
						origin = fmt.Sprintf("https://e-%d-%d.example", k, j-1)
					}
					if j%7 == 6 {
						acct = "shared" // all three write it: the last writer wins
					}
					start := time.Now()
					st, out := s.call(t, method, "/accounts/"+acct, body)
					d := time.Since(start)
					if st >= 300 && !(method == "DELETE" && st == 404) {
						t.Errorf("server %d %s %s: %d %s", s.n, method, acct, st, out)
						continue
					}
					edits.Add(1)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
					if acct != "shared" {
						if r := send(ec, preflightProbe(s.base, acct, origin, "GET", want)); r.err != nil {
							t.Errorf("the request after %s %s at server %d: %v", method, acct, s.n, r.err)
						}
					}
				}
			}()
		}
		ewg.Wait()
		close(stop)
		wg.Wait()
		t.Logf("load: requests=%d preflights=%d normal=%d wrong=%d lost=%d (resent %d, replayed by Go's transport %d); edits=%d, edit latency p50 %v p99 %v",
			stats.requests.Load(), stats.preflights.Load(), stats.normal.Load(), stats.wrong.Load(), stats.lost.Load(),
			stats.retries.Load(), stats.replays.Load(), edits.Load(), percentile(lat, .5), percentile(lat, .99))
		for _, e := range stats.errors {
			t.Errorf("load: %s", e)
		}
		if stats.wrong.Load()+stats.lost.Load() != 0 {
			t.Errorf("%d wrong and %d lost requests", stats.wrong.Load(), stats.lost.Load())
		}
		if edits.Load() < 200 {
			t.Errorf("only %d edits", edits.Load())
		}
		f.agree(t, all)
	})

	t.Run("storage unreachable", func(t *testing.T) {
		steady := preflightProbe(s1.base, "steady-1", "https://steady-1.example", "PUT", "GET, PUT")
		// Server 3 stops gracefully: its snapshot is on disk.
		s3.stop(t)
		bak := f.storage + ".bak"
		if err := os.Rename(f.storage, bak); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.storage, []byte("not a directory"), 0o600); err != nil {
			t.Fatal(err)
		}
		restore := func() {
			_ = os.Remove(f.storage)
			_ = os.Rename(bak, f.storage)
		}
		defer restore()
		if st, out := s1.call(t, "PUT", "/accounts/down", rulesJSON("https://down.example")); st != http.StatusServiceUnavailable {
			t.Errorf("a write while the storage is down: %d %s", st, out)
		}
		if err := until(5*time.Second, func() error {
			st, err := s1.status(t)
			if err == nil && (!st.Stale || st.ConsecutiveFailures == 0) {
				err = fmt.Errorf("status %+v", st)
			}
			return err
		}); err != nil {
			t.Errorf("staleness not shown: %v", err)
		}
		if r := send(c, steady); r.err != nil {
			t.Errorf("last rules no longer served: %v", r.err)
		}
		// Server 3 restarts from its snapshot.
		s3 = f.start(3, false)
		if r := send(c, preflightProbe(s3.base, "steady-1", "https://steady-1.example", "PUT", "GET, PUT")); r.err != nil {
			t.Errorf("restart from the snapshot: %v", r.err)
		}
		if st, _ := s3.status(t); st == nil || st.Serving != "snapshot" {
			t.Errorf("restarted server status: %+v", st)
		}
		// Server 4 has no snapshot: it fails closed.
		s4 := f.start(4, true)
		if r := send(c, preflightProbe(s4.base, "steady-1", "https://steady-1.example", "PUT", "")); r.err != nil {
			t.Errorf("fail closed, preflight: %v", r.err)
		}
		if r := send(c, normalProbe(s4.base, "steady-1", "https://steady-1.example", false, "ok")); r.err != nil {
			t.Errorf("fail closed, normal request: %v", r.err)
		}
		restore()
		for _, s := range []*fleetServer{s1, s3, s4} {
			if err := until(40*time.Second, func() error {
				return send(c, preflightProbe(s.base, "steady-1", "https://steady-1.example", "PUT", "GET, PUT")).err
			}); err != nil {
				t.Errorf("server %d after the storage came back: %v", s.n, err)
			}
		}
		if st, out := s1.call(t, "PUT", "/accounts/up", rulesJSON("https://up.example")); st != http.StatusCreated {
			t.Errorf("a write once the storage is back: %d %s", st, out)
		}
		f.agree(t, []*fleetServer{s1, s2, s3, s4})
		s4.stop(t)
	})

	t.Run("killed while writing", func(t *testing.T) {
		done := make(chan int)
		go func() {
			n := 0
			for i := range 1000 {
				st, _ := storeCallNoFail(s3.admin, "PUT", fmt.Sprintf("/atomsphere_cors/fleet/accounts/kill-%d", i), rulesJSON(fmt.Sprintf("https://kill-%d.example", i)))
				if st != http.StatusCreated {
					break
				}
				n++
			}
			done <- n
		}()
		time.Sleep(300 * time.Millisecond)
		s3.kill()
		n := <-done
		t.Logf("server 3 killed after %d acknowledged writes", n)
		// The store stays readable and writable (once the dead server's
		// lock is stale, about 10 s for file_system) and consistent.
		start := time.Now()
		if st, out := s1.call(t, "PUT", "/accounts/after-kill", rulesJSON("https://after-kill.example")); st != http.StatusCreated {
			t.Fatalf("write after the kill: %d %s", st, out)
		}
		t.Logf("first write after the kill took %v", time.Since(start).Round(time.Millisecond))
		for i := range n {
			if err := until(5*time.Second, func() error {
				return send(c, preflightProbe(s1.base, fmt.Sprintf("kill-%d", i), fmt.Sprintf("https://kill-%d.example", i), "GET", "GET, POST, DELETE")).err
			}); err != nil {
				t.Errorf("acknowledged write lost: %v", err)
			}
		}
		s3 = f.start(3, false)
		f.agree(t, []*fleetServer{s1, s2, s3})
	})

	t.Run("corrupt record", func(t *testing.T) {
		// A record written straight into the store by a broken writer,
		// with its log entry and head, as a writer would.
		dir := filepath.Join(f.storage, "atomsphere_cors", "fleet")
		if err := os.WriteFile(filepath.Join(dir, "accounts", "steady-2"), []byte(`{"account":"steady-2","rules":[{"origin":`), 0o600); err != nil {
			t.Fatal(err)
		}
		var h rulestore.Head
		b, _ := os.ReadFile(filepath.Join(dir, "head"))
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		h.Seq++
		_ = os.WriteFile(filepath.Join(dir, "log", fmt.Sprintf("%020d", h.Seq)), mustJSON(rulestore.LogEntry{Accounts: []string{"steady-2"}}), 0o600)
		_ = os.WriteFile(filepath.Join(dir, "head"), mustJSON(h), 0o600)
		for _, s := range all {
			if err := until(5*time.Second, func() error {
				return send(c, preflightProbe(s.base, "steady-2", "https://steady-2.example", "PUT", "")).err
			}); err != nil {
				t.Errorf("server %d still serves the corrupt account: %v", s.n, err)
			}
			if r := send(c, preflightProbe(s.base, "steady-3", "https://steady-3.example", "PUT", "GET, PUT")); r.err != nil {
				t.Errorf("server %d, another account: %v", s.n, r.err)
			}
			if st, _ := s.status(t); st == nil || st.Refused["steady-2"] == "" {
				t.Errorf("server %d status does not name the refused record: %+v", s.n, st)
			}
		}
	})
}

func storeCallNoFail(admin, method, path, body string) (int, error) {
	st, _, err := testkit.TryAdmin(admin, method, path, "", body)
	return st, err
}

// agree waits (bounded) until every server exports the same accounts.
func (f *fleet) agree(t *testing.T, servers []*fleetServer) {
	t.Helper()
	err := until(10*time.Second, func() error {
		var first string
		for i, s := range servers {
			st, out := s.call(t, "GET", "/export", "")
			if st != 200 {
				return fmt.Errorf("server %d export: %d", s.n, st)
			}
			if i == 0 {
				first = out
			} else if out != first {
				return fmt.Errorf("server %d exports %d lines, server %d %d", s.n, strings.Count(out, "\n"), servers[0].n, strings.Count(first, "\n"))
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("servers do not agree: %v", err)
	}
}
