package redisstorage

// TestStoreFleetRedis runs the rules store (docs/store.md) over a
// networked storage: Debian's redis-server on loopback, and three real
// Caddy processes (built once from ../cmd) whose handlers keep their
// store in it through this package's storage module. Edits go through
// each server's admin routes and are checked with real preflights on
// every server; then redis-server is stopped mid-run (servers keep
// serving the last rules, writes answer 503) and started again from its
// dump (servers recover: writes work and converge again). Ports: Redis
// on a free loopback port, HTTP 127.0.0.1:9611-9613, admin
// 127.0.0.1:2966-2968.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"atomspherecors/internal/testkit"
	"github.com/redis/go-redis/v9"
)

const poll = 250 * time.Millisecond

var client = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 10 * time.Second}

// proc is a process the test started, killed by its pid at the end.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error
	log  *strings.Builder
	once sync.Once
}

func start(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1), log: &strings.Builder{}}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(p.kill)
	return p
}

// kill sends SIGKILL to the process's pid (once) and waits for it.
func (p *proc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// until retries check every 20 ms for at most d.
func until(d time.Duration, check func() error) error {
	return testkit.Until(d, 20*time.Millisecond, check)
}

type redisServer struct {
	bin, dir, addr string
	port           int
	p              *proc
}

// start runs redis-server without automatic persistence; its dump file
// (written only by an explicit SAVE) lives in dir, so a restart reloads
// what was saved.
func (r *redisServer) start(t *testing.T) {
	t.Helper()
	r.p = start(t, "redis-server", exec.Command(r.bin, "--port", fmt.Sprint(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir))
	rdb := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1})
	defer rdb.Close()
	if err := until(10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err()
	}); err != nil {
		t.Fatalf("redis-server did not answer: %v\n%s", err, r.p.log)
	}
}

func (r *redisServer) cmd(t *testing.T, args ...any) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: r.addr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("redis %v: %v", args, err)
	}
}

type server struct {
	n           int
	admin, base string
	p           *proc
}

func (s *server) call(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.admin+"/atomsphere_cors/main"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("server %d: %s %s: %v", s.n, method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func (s *server) status() (map[string]any, error) {
	res, err := client.Get(s.admin + "/atomsphere_cors/main")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil || res.StatusCode != 200 {
		return nil, fmt.Errorf("status %d %v", res.StatusCode, err)
	}
	return st, nil
}

// preflight checks a real preflight for acct from origin: allowed (204
// with the origin echoed) or refused (401, no Allow-Origin).
func (s *server) preflight(acct, origin string, allowed bool) error {
	req, _ := http.NewRequest(http.MethodOptions, s.base+"/api/rest/v1/"+acct+"/Atom/1", nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "GET")
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	got := res.Header.Get("Access-Control-Allow-Origin")
	switch {
	case allowed && (res.StatusCode != http.StatusNoContent || got != origin):
		return fmt.Errorf("server %d: preflight %s from %s: %d, Allow-Origin %q; want 204 and the origin", s.n, acct, origin, res.StatusCode, got)
	case !allowed && (res.StatusCode != http.StatusUnauthorized || got != ""):
		return fmt.Errorf("server %d: preflight %s from %s: %d, Allow-Origin %q; want 401 and none", s.n, acct, origin, res.StatusCode, got)
	}
	return nil
}

func rules(origin string) string { return fmt.Sprintf(`[{"origin":%q,"methods":["GET"]}]`, origin) }

func TestStoreFleetRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy and redis-server processes")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not on PATH (CI installs Debian's redis-server, see .ci/run)")
		}
		t.Skip("redis-server is not on PATH")
	}
	port := freePort(t)
	rs := &redisServer{bin: bin, dir: t.TempDir(), port: port, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	rs.start(t)

	caddy := filepath.Join(t.TempDir(), "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", caddy, "atomspherecors/redisstore/cmd").CombinedOutput(); err != nil {
		t.Fatalf("go build ../cmd: %v\n%s", err, out)
	}

	var all []*server
	for n := 1; n <= 3; n++ {
		s := &server{n: n, admin: fmt.Sprintf("http://127.0.0.1:%d", 2965+n), base: fmt.Sprintf("http://127.0.0.1:%d", 9610+n)}
		home := t.TempDir()
		cfg, _ := json.Marshal(map[string]any{
			"admin":   map[string]any{"listen": strings.TrimPrefix(s.admin, "http://"), "config": map[string]any{"persist": false}},
			"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
			"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"api": map[string]any{
				"listen":    []string{strings.TrimPrefix(s.base, "http://")},
				"protocols": []string{"h1"},
				"routes": []any{map[string]any{"handle": []any{
					map[string]any{"handler": "atomsphere_cors", "store": map[string]any{
						"name": "main", "poll_interval": poll.String(),
						"storage": map[string]any{"module": "atomsphere_test_redis", "address": rs.addr}}},
					map[string]any{"handler": "static_response", "status_code": 200, "body": "ok"},
				}}},
			}}}},
		})
		cfgPath := filepath.Join(home, "caddy.json")
		if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(caddy, "run", "--config", cfgPath)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(home, "config"),
			"XDG_DATA_HOME="+filepath.Join(home, "data"), "HOME="+home)
		s.p = start(t, fmt.Sprintf("caddy %d", n), cmd)
		if err := until(15*time.Second, func() error {
			st, err := s.status()
			if err != nil {
				return err
			}
			if st["serving"] != "store" {
				return fmt.Errorf("serving %v", st["serving"])
			}
			return nil
		}); err != nil {
			t.Fatalf("server %d did not start serving the store: %v\n%s", n, err, s.p.log)
		}
		all = append(all, s)
	}
	defer func() {
		if t.Failed() {
			for _, s := range all {
				t.Logf("server %d log:\n%s", s.n, s.p.log)
			}
		}
	}()

	// converge waits (bounded) until every server answers acct's
	// preflights as expected.
	converge := func(acct, origin string, allowed bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for _, s := range all {
			if err := until(within, func() error { return s.preflight(acct, origin, allowed) }); err != nil {
				t.Fatalf("no convergence within %v: %v", within, err)
			}
		}
		return time.Since(start)
	}

	// Edits through each server in turn.
	var worst time.Duration
	for i := range 9 {
		at := all[i%3]
		acct, origin := fmt.Sprintf("acct-%d", i), fmt.Sprintf("https://a%d.example", i)
		if st, out := at.call(t, "PUT", "/accounts/"+acct, rules(origin)); st != http.StatusCreated {
			t.Fatalf("server %d: PUT %s: %d %s", at.n, acct, st, out)
		}
		if err := at.preflight(acct, origin, true); err != nil {
			t.Errorf("the next request at the server that took the edit: %v", err)
		}
		worst = max(worst, converge(acct, origin, true, 5*time.Second))
	}
	// A replacement through another server: the old origin goes everywhere.
	if st, out := all[1].call(t, "PUT", "/accounts/acct-0", rules("https://new0.example")); st != http.StatusOK {
		t.Fatalf("PUT acct-0 again: %d %s", st, out)
	}
	worst = max(worst, converge("acct-0", "https://new0.example", true, 5*time.Second))
	converge("acct-0", "https://a0.example", false, 5*time.Second)
	// A delete through the third server.
	if st, out := all[2].call(t, "DELETE", "/accounts/acct-8", ""); st != http.StatusNoContent {
		t.Fatalf("DELETE acct-8: %d %s", st, out)
	}
	worst = max(worst, converge("acct-8", "https://a8.example", false, 5*time.Second))
	t.Logf("11 edits over 3 servers via Redis: slowest convergence on every server %v (poll %v)", worst, poll)

	// Redis goes away mid-run; its data is saved first so that the restart
	// below brings the same store back.
	rs.cmd(t, "SAVE")
	rs.p.kill()
	for _, s := range all {
		if err := until(10*time.Second, func() error {
			st, err := s.status()
			if err != nil {
				return err
			}
			if st["stale"] != true {
				return fmt.Errorf("status %v", st)
			}
			return nil
		}); err != nil {
			t.Fatalf("server %d does not report the store stale: %v", s.n, err)
		}
	}
	for _, s := range all {
		if st, out := s.call(t, "PUT", "/accounts/acct-1", rules("https://down.example")); st != http.StatusServiceUnavailable {
			t.Errorf("server %d: PUT while Redis is down: %d %s; want 503", s.n, st, out)
		}
	}
	// Several poll intervals later every server still serves the last rules
	// and none took the refused write.
	time.Sleep(4 * poll)
	for _, s := range all {
		for i := 1; i < 8; i++ {
			if err := s.preflight(fmt.Sprintf("acct-%d", i), fmt.Sprintf("https://a%d.example", i), true); err != nil {
				t.Errorf("while Redis is down: %v", err)
			}
		}
		for _, e := range []error{
			s.preflight("acct-0", "https://new0.example", true),
			s.preflight("acct-0", "https://a0.example", false),
			s.preflight("acct-8", "https://a8.example", false),
			s.preflight("acct-1", "https://down.example", false),
		} {
			if e != nil {
				t.Errorf("while Redis is down: %v", e)
			}
		}
	}

	// Redis comes back from its dump: polls recover and writes work again.
	down := time.Now()
	rs.start(t)
	for _, s := range all {
		if err := until(45*time.Second, func() error {
			st, err := s.status()
			if err != nil {
				return err
			}
			if st["stale"] != false {
				return fmt.Errorf("status %v", st)
			}
			return nil
		}); err != nil {
			t.Fatalf("server %d did not recover: %v", s.n, err)
		}
	}
	t.Logf("every server read the store again %v after Redis restarted", time.Since(down).Round(time.Millisecond))
	for i, s := range all {
		acct, origin := fmt.Sprintf("after-%d", i), fmt.Sprintf("https://after%d.example", i)
		if st, out := s.call(t, "PUT", "/accounts/"+acct, rules(origin)); st != http.StatusCreated {
			t.Fatalf("server %d: PUT after recovery: %d %s", s.n, st, out)
		}
		converge(acct, origin, true, 5*time.Second)
	}
	converge("acct-1", "https://a1.example", true, time.Second)
	converge("acct-0", "https://new0.example", true, time.Second)
}
