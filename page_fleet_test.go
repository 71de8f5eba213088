package atomspherecors

// The CORS page on two real Caddy processes sharing one file_system
// store (docs/page.md, "Many servers"): a write through one server's page
// is served, shown and listed in the history by the other within its
// poll interval, and a write carrying a version the other server has
// already replaced is refused there with 412. Ports: HTTP
// 127.0.0.1:9821-9824, admin 127.0.0.1:2941-2944.

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
// and the handler on a store in storage, polled every pagePoll, and
// waits until it answers.
func startPageProcess(t *testing.T, n int, storage string) string {
	return startPageProcessPolling(t, n, storage, pagePoll)
}

func startPageProcessPolling(t *testing.T, n int, storage string, poll time.Duration) string {
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
`, 2940+n, storage, base, poll, demoHash, poll)
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

// fleetPageRules is acct-a's GET /rules on the server at base: its body
// and ETag.
func fleetPageRules(t *testing.T, base string) (string, string) {
	t.Helper()
	res, body := pageCall(t, "GET", base+"/settings/cors/rules", "acct-a", nil, "")
	if res.StatusCode != 200 {
		t.Fatalf("GET %s rules: %d %s", base, res.StatusCode, body)
	}
	return strings.TrimSpace(body), res.Header.Get("ETag")
}

func TestPageTwoServers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy processes")
	}
	storage := filepath.Join(t.TempDir(), "store")
	s1, s2 := startPageProcess(t, 1, storage), startPageProcess(t, 2, storage)
	rules := func(base string) (string, string) { t.Helper(); return fleetPageRules(t, base) }
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

// A server whose copy of an account is older than the store (it has not
// polled yet) serves what its answers say from its next request on
// (docs/page.md, "Routes"): after a 412 it shows the version that
// refused the write; its page shows the rules as stored (as its history,
// read from the store, does) and its API and /check then agree; after a
// write of the rules the store already holds (200, nothing written) it
// serves those rules, through the page and through the admin routes.
func TestPageStaleServerServesWhatItAnswers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs Caddy processes")
	}
	storage := filepath.Join(t.TempDir(), "store")
	// Both poll once an hour: whatever server 2 serves in this test, it
	// has from its own writes and their answers.
	s1, s2 := startPageProcessPolling(t, 3, storage, time.Hour), startPageProcessPolling(t, 4, storage, time.Hour)
	rules := func(base string) (string, string) { t.Helper(); return fleetPageRules(t, base) }
	allowed := func(base, origin string) bool {
		t.Helper()
		r, _ := doRequest(t, "OPTIONS", base+"/api/rest/v1/acct-a/x", http.Header{"Origin": {origin}, "Access-Control-Request-Method": {"GET"}})
		return r.StatusCode == 204
	}
	put := func(base, ifMatch, body string) (*http.Response, string) {
		t.Helper()
		hdr := jsonCT
		if ifMatch != "" {
			hdr = withHeaders(jsonCT, "If-Match", ifMatch)
		}
		return pageCall(t, "PUT", base+"/settings/cors/rules", "acct-a", hdr, body)
	}
	_, empty := rules(s2)

	two := `[{"origin":"https://kept.example","methods":["GET"]},{"origin":"https://gone.example","methods":["GET"]}]`
	res, body := put(s1, empty, two)
	if res.StatusCode != 200 {
		t.Fatalf("PUT two origins on server 1: %d %s", res.StatusCode, body)
	}
	twoTag := res.Header.Get("ETag")
	if allowed(s2, "https://kept.example") {
		t.Fatal("server 2 already serves server 1's write: the test needs it not to have polled")
	}

	// 412 on server 2: its next read shows the version that refused it.
	if res, body := put(s2, empty, `[{"origin":"https://other.example"}]`); res.StatusCode != 412 {
		t.Fatalf("PUT on server 2 with the version before server 1's write: %d %s, want 412", res.StatusCode, body)
	}
	if !allowed(s2, "https://gone.example") {
		t.Error("server 2 after its 412 does not serve the rules that refused the write")
	}
	if got, tag := rules(s2); tag != twoTag || !strings.Contains(got, "gone.example") {
		t.Errorf("server 2 after its 412: %s %s, want server 1's rules and ETag %s (else reloading loops on 412)", got, tag, twoTag)
	}

	// Server 1 removes an origin; server 2 has not polled. Its page shows
	// the rules as stored (as its history, read from the store, lists
	// the change), and from then on its API and /check agree.
	one := `[{"origin":"https://kept.example","methods":["GET"]}]`
	res, body = put(s1, twoTag, one)
	if res.StatusCode != 200 {
		t.Fatalf("PUT one origin on server 1: %d %s", res.StatusCode, body)
	}
	oneTag := res.Header.Get("ETag")
	if !allowed(s2, "https://gone.example") {
		t.Fatal("server 2 already refuses the removed origin: the test needs it not to have polled")
	}
	if got, tag := rules(s2); strings.Contains(got, "gone.example") || tag != oneTag {
		t.Errorf("server 2's page before its poll: %s %s, want the stored rules, ETag %s", got, tag, oneTag)
	}
	if allowed(s2, "https://gone.example") {
		t.Error("server 2's page shows the rules without gone.example, yet its API still allows it")
	}
	if res, body := pageCall(t, "GET", s2+"/settings/cors/check?origin=https://gone.example&method=GET", "acct-a", nil, ""); !strings.Contains(body, `"allowed":false`) {
		t.Errorf("server 2's /check for the removed origin: %d %s, want not allowed", res.StatusCode, body)
	}

	// Server 1 adds it back; server 2 takes a write of the rules the
	// store now holds: 200, and from its next request on it serves them.
	res, body = put(s1, oneTag, two)
	if res.StatusCode != 200 {
		t.Fatalf("PUT two origins again on server 1: %d %s", res.StatusCode, body)
	}
	if allowed(s2, "https://gone.example") {
		t.Fatal("server 2 already allows gone.example again: the test needs it not to have polled")
	}
	if res, body := put(s2, twoTag, two); res.StatusCode != 200 || res.Header.Get("ETag") != twoTag {
		t.Fatalf("PUT of the stored rules on server 2: %d %s ETag %s, want 200 and %s", res.StatusCode, body, res.Header.Get("ETag"), twoTag)
	}
	if !allowed(s2, "https://gone.example") {
		t.Error("server 2 answered 200 to the rules with gone.example, yet its API does not allow it")
	}

	// The same through the admin routes: server 1 removes the origin,
	// server 2 takes the same rules unconditionally (200, nothing
	// written) and serves them at once.
	res, body = put(s1, twoTag, one)
	if res.StatusCode != 200 {
		t.Fatalf("PUT one origin again on server 1: %d %s", res.StatusCode, body)
	}
	if !allowed(s2, "https://gone.example") {
		t.Fatal("server 2 already refuses gone.example again: the test needs it not to have polled")
	}
	if st, out := storeCall(t, "http://127.0.0.1:2944", "PUT", "/atomsphere_cors/fleetpage/accounts/acct-a", one); st != 200 {
		t.Fatalf("admin PUT on server 2 of the stored rules: %d %s", st, out)
	}
	if allowed(s2, "https://gone.example") {
		t.Error("server 2's admin route answered 200 to rules without gone.example, yet its API allows it")
	}
}
