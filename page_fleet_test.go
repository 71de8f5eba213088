package atomspherecors

// The CORS page on two real Caddy processes sharing one file_system
// store (docs/page.md, "Many servers"): a write through one server's page
// is served, shown and listed in the history by the other within its
// poll interval, and a write carrying a version the other server has
// already replaced is refused there with 412. Ports: HTTP
// 127.0.0.1:9821-9822, admin 127.0.0.1:2941-2942.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"atomspherecors/internal/rulestore"
)

const pagePoll = 250 * time.Millisecond

// startPageProcess runs Caddy (testdata/caddy) as server n with the page
// and the handler on a store in storage, and waits until it answers.
func startPageProcess(t *testing.T, n int, storage string) string {
	t.Helper()
	home := t.TempDir()
	base := fmt.Sprintf("http://127.0.0.1:%d", 9820+n)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	storage file_system %s
	log {
		level WARN
	}
}

%s {
	bind 127.0.0.1
	atomsphere_cors {
		store fleetpage {
			poll_interval %s
		}
	}
	handle_path /settings/cors/* {
		basic_auth {
			acct-a %s
		}
		atomsphere_cors_page {
			store fleetpage {
				poll_interval %s
			}
			account {http.auth.user.id}
		}
	}
	respond "api" 200
}
`, 2940+n, storage, base, pagePoll, demoHash, pagePoll)
	file := filepath.Join(home, "Caddyfile")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(caddyBinary(t), "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_DATA_HOME="+filepath.Join(home, "data"))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("server %d's log:\n%s", n, log.String())
		}
	})
	err := until(20*time.Second, func() error {
		res, err := testClient.Get(base + "/")
		if err != nil {
			return err
		}
		res.Body.Close()
		return nil
	})
	if err != nil {
		t.Fatalf("server %d did not start: %v\n%s", n, err, log.String())
	}
	return base
}

func TestPageTwoServers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy processes")
	}
	storage := filepath.Join(t.TempDir(), "store")
	s1, s2 := startPageProcess(t, 1, storage), startPageProcess(t, 2, storage)
	rules := func(base string) (string, string) {
		t.Helper()
		res, body := pageCall(t, "GET", base+"/settings/cors/rules", "acct-a", nil, "")
		if res.StatusCode != 200 {
			t.Fatalf("GET %s rules: %d %s", base, res.StatusCode, body)
		}
		return strings.TrimSpace(body), res.Header.Get("ETag")
	}
	_, before := rules(s2)

	start := time.Now()
	res, body := pageCall(t, "PUT", s1+"/settings/cors/rules", "acct-a", jsonCT, `[{"origin":"https://fleet.example","methods":["GET","DELETE"]}]`)
	if res.StatusCode != 200 {
		t.Fatalf("PUT on server 1: %d %s", res.StatusCode, body)
	}
	tag := res.Header.Get("ETag")

	// Server 2 has not polled yet (or just has): a write there with the
	// version it may still show is checked against the store, not
	// against what server 2 has read.
	res, body = pageCall(t, "PUT", s2+"/settings/cors/rules", "acct-a", withHeaders(jsonCT, "If-Match", before), `[{"origin":"https://stale.example"}]`)
	if res.StatusCode != 412 {
		t.Fatalf("PUT on server 2 with the version before server 1's write: %d %s, want 412", res.StatusCode, body)
	}

	want := `{"account":"acct-a","rules":[{"origin":"https://fleet.example","methods":["GET","DELETE"]}]}`
	err := until(5*pagePoll+2*time.Second, func() error {
		got, etag := rules(s2)
		if got != want || etag != tag {
			return fmt.Errorf("server 2 shows %s %s", got, etag)
		}
		r, _ := doRequest(t, "OPTIONS", s2+"/api/rest/v1/acct-a/x", http.Header{"Origin": {"https://fleet.example"}, "Access-Control-Request-Method": {"DELETE"}})
		if r.StatusCode != 204 {
			return fmt.Errorf("server 2's preflight: %d", r.StatusCode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("server 2 served server 1's write after %s (poll interval %s)", took, pagePoll)
	if took > 4*pagePoll+time.Second {
		t.Errorf("server 2 took %s, over its poll interval %s and the PUT's time", took, pagePoll)
	}

	_, hist := pageCall(t, "GET", s2+"/settings/cors/history", "acct-a", nil, "")
	var h rulestore.History
	if err := json.Unmarshal([]byte(hist), &h); err != nil || len(h.Changes) != 1 || h.Changes[0].By != "acct-a" || h.Changes[0].Rules[0].Origin != "https://fleet.example" {
		t.Errorf("server 2's history: %s %v, want server 1's write", hist, err)
	}

	// And back: server 2's write with the current version, seen on 1.
	res, body = pageCall(t, "PUT", s2+"/settings/cors/rules", "acct-a", withHeaders(jsonCT, "If-Match", tag), `[]`)
	if res.StatusCode != 200 {
		t.Fatalf("PUT on server 2 with the current version: %d %s", res.StatusCode, body)
	}
	err = until(5*pagePoll+2*time.Second, func() error {
		if got, _ := rules(s1); got != `{"account":"acct-a","rules":[]}` {
			return fmt.Errorf("server 1 shows %s", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
