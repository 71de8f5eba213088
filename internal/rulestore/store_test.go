package rulestore

// The rules store in one process: the copy-on-write view, two stores
// sharing one file_system storage as two servers would, the Caddyfile
// and JSON settings, and the admin routes against Caddy loaded in this
// process (docs/store.md). Ports: admin 127.0.0.1:2969, HTTP
// 127.0.0.1:9699.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

func TestAccountsViewMatchesAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]bool{}
	v := newView(nil)
	one := policy.Account{Origins: []policy.AllowedOrigin{{Origin: "https://a.example", Methods: &policy.MethodSet{List: []string{"GET"}}}}}
	for step := range 5000 {
		batch := map[string]*policy.Account{}
		for range 1 + rng.IntN(3) {
			id := fmt.Sprintf("acct-%04d", rng.IntN(1500))
			if rng.IntN(3) == 0 {
				batch[id] = nil
				delete(want, id)
			} else {
				batch[id] = &one
				want[id] = true
			}
		}
		v = v.with(batch)
		if v.count != len(want) {
			t.Fatalf("step %d: count %d, want %d", step, v.count, len(want))
		}
		if step%500 == 0 {
			var got []string
			after := ""
			for range 1000 {
				ids, more := v.IDsAfter(after, 7)
				got = append(got, ids...)
				if !more {
					break
				}
				after = ids[len(ids)-1]
			}
			wantIDs := make([]string, 0, len(want))
			for id := range want {
				wantIDs = append(wantIDs, id)
			}
			slices.Sort(wantIDs)
			if !slices.Equal(got, wantIDs) {
				t.Fatalf("step %d: listed %d IDs, want %d", step, len(got), len(wantIDs))
			}
		}
	}
	for i := range 1500 {
		id := fmt.Sprintf("acct-%04d", i)
		if _, ok := v.Get(id); ok != want[id] {
			t.Fatalf("%s: present %v, want %v", id, ok, want[id])
		}
	}
}

// testStores opens n stores on one file_system directory, as n servers
// sharing it would; the snapshots go to a temporary data directory.
func testStores(t *testing.T, dir string, n int) []*Store {
	t.Helper()
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	out := make([]*Store, n)
	for i := range out {
		st := &certmagic.FileStorage{Path: dir}
		out[i] = Open("t", fmt.Sprintf("t\n%d", i), dataDirFromEnv(), st, zap.NewNop(), time.Hour)
		s := out[i]
		t.Cleanup(func() { _ = s.Destruct() })
	}
	return out
}

// twoStores opens two stores, two servers of a fleet, over a new
// storage directory dir.
func twoStores(t *testing.T) (dir string, a, b *Store) {
	t.Helper()
	dir = t.TempDir()
	ss := testStores(t, dir, 2)
	return dir, ss[0], ss[1]
}

// writeOf is the change that writes rules to account id, compiled as an
// admin write's are.
func writeOf(tb testing.TB, s *Store, id string, rules ...policy.Rule) Change {
	tb.Helper()
	a, err := s.Compile(id, rules)
	if err != nil {
		tb.Fatal(err)
	}
	return Change{ID: id, Rules: rules, Acct: a}
}

func put(t *testing.T, s *Store, id string, rules ...policy.Rule) {
	t.Helper()
	if _, err := s.Commit(context.Background(), []Change{writeOf(t, s, id, rules...)}); err != nil {
		t.Fatal(err)
	}
}

func allows(s *Store, id, origin string) bool {
	a := s.Account(id)
	return a.Find(origin) != nil
}

func TestStoreWritesConverge(t *testing.T) {
	_, a, b := twoStores(t)
	ss := []*Store{a, b}
	ctx := context.Background()
	put(t, a, "acct-1", policy.Rule{Origin: "https://one.example"})
	if !allows(a, "acct-1", "https://one.example") {
		t.Fatal("the writing server does not serve its write")
	}
	if allows(b, "acct-1", "https://one.example") {
		t.Fatal("served before a poll")
	}
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if !allows(b, "acct-1", "https://one.example") {
		t.Fatal("the other server did not pick the write up")
	}
	// Writes to different accounts from both servers at once: none lost.
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				put(t, s, fmt.Sprintf("s%d-%d", i, j), policy.Rule{Origin: fmt.Sprintf("https://s%d-%d.example", i, j)})
			}
		}()
	}
	wg.Wait()
	for _, s := range ss {
		if err := s.poll(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range ss {
			for j := range 20 {
				if !allows(s, fmt.Sprintf("s%d-%d", i, j), fmt.Sprintf("https://s%d-%d.example", i, j)) {
					t.Errorf("%s lacks s%d-%d", s.Key, i, j)
				}
			}
		}
	}
	// A deletion reaches the other server.
	if _, err := b.Commit(ctx, []Change{{ID: "acct-1", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.view.Load().Get("acct-1"); ok {
		t.Error("deleted account still served by the other server")
	}
}

func TestStoreCorruptRecordAndInterruptedWrite(t *testing.T) {
	dir, a, b := twoStores(t)
	ctx := context.Background()
	put(t, a, "good", policy.Rule{Origin: "https://good.example"})
	put(t, a, "bad", policy.Rule{Origin: "https://bad.example"})
	// A writer killed after its log entry and part of its accounts.
	st := &certmagic.FileStorage{Path: dir}
	head, _ := readHead(ctx, st, a.keys)
	_ = st.Store(ctx, a.keys.log(head.Seq+1), func() []byte { b, _ := json.Marshal(LogEntry{Accounts: []string{"bad"}}); return b }())
	_ = st.Store(ctx, a.keys.account("bad"), []byte(`{"account":"bad","rules":[{"origin":"https://bad.example/x"}]}`))
	// The next writer adopts the entry: every server reads "bad" again.
	put(t, a, "other", policy.Rule{Origin: "https://other.example"})
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if allows(b, "bad", "https://bad.example") {
		t.Error("an invalid record is served")
	}
	if !allows(b, "good", "https://good.example") || !allows(b, "other", "https://other.example") {
		t.Error("other accounts stopped working")
	}
	if st := b.Status(); !strings.Contains(st.Refused["bad"], "must not have a path") {
		t.Errorf("status does not report the refused record: %+v", st)
	}
	// Written again correctly, it is served again.
	put(t, a, "bad", policy.Rule{Origin: "https://bad.example"})
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if !allows(b, "bad", "https://bad.example") || len(b.Status().Refused) != 0 {
		t.Error("a record written again is not served")
	}
}

func TestStoreSameAccountLastWriterWins(t *testing.T) {
	dir := t.TempDir()
	ss := testStores(t, dir, 3)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				put(t, s, "shared", policy.Rule{Origin: fmt.Sprintf("https://w%d-%d.example", i, j)})
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(filepath.Join(dir, "atomsphere_cors", "t", "accounts", "shared"))
	if err != nil {
		t.Fatal(err)
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if err := s.poll(ctx); err != nil {
			t.Fatal(err)
		}
		if got := RulesOf(s.Account("shared")); !reflect.DeepEqual(got[0].Origin, rec.Rules[0].Origin) {
			t.Errorf("%s serves %v, the store holds %v", s.Key, got, rec.Rules)
		}
	}
}

// dataDirFromEnv is the data directory a test's stores keep their
// snapshots in: where Caddy's would be, under the XDG_DATA_HOME the test
// sets, so that each test has its own.
func dataDirFromEnv() string { return filepath.Join(os.Getenv("XDG_DATA_HOME"), "caddy") }

// An account the store takes is one its export can give back: rules that
// export (with the default methods written out) to more than one import
// line or PUT body can hold are refused when written, not found out at
// the restore.
func TestStoreAccountFitsOneImportLine(t *testing.T) {
	s := testStores(t, t.TempDir(), 1)[0]
	rules := make([]policy.Rule, 30000)
	for i := range rules {
		rules[i] = policy.Rule{Origin: fmt.Sprintf("http://a%d", i)}
	}
	body, _ := json.Marshal(rules)
	if len(body) > MaxRulesBody {
		t.Fatalf("the PUT body is %d bytes: this test needs one under %d", len(body), MaxRulesBody)
	}
	if _, err := s.Compile("big", rules); err == nil || !strings.Contains(err.Error(), "as export writes them") {
		t.Errorf("an account whose export line is over %d bytes: %v", MaxRulesBody, err)
	}
	if _, err := s.Compile("small", rules[:1000]); err != nil {
		t.Errorf("an account of 1 000 rules: %v", err)
	}
}

// A spool file of a live process that has not changed for a long time
// is abandoned (its PID is another process's now, or a zombie's): the
// next store opening removes it; a fresh one is an import in progress.
func TestStoreSpoolOfALivePIDAbandoned(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	dir := spoolDir(dataDirFromEnv())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	live := os.Getppid() // the go command running this test: alive
	old := filepath.Join(dir, fmt.Sprintf("%s%d-old.ndjson", spoolPrefix, live))
	fresh := filepath.Join(dir, fmt.Sprintf("%s%d-fresh.ndjson", spoolPrefix, live))
	for _, f := range []string{old, fresh} {
		if err := os.WriteFile(f, []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-spoolAbandoned - time.Minute)
	if err := os.Chtimes(old, long, long); err != nil {
		t.Fatal(err)
	}
	removeStaleSpools(dataDirFromEnv(), zap.NewNop())
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("an abandoned spool file of a live PID is still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a fresh spool file of a live PID was removed: %v", err)
	}
}
