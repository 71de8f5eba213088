package rulestore

// The store's shared base (docs/store.md, "How the store works"): a
// server that starts without a snapshot reads the base and the log
// after it, and falls back to every account when the base cannot be
// used.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/testkit"
)

// baseFixture writes 30 accounts through server a, then the base, then
// three changes after it (a create, a replacement, a delete); and it
// rewrites account acct-07's record in the storage behind the store's
// back (no log entry), so that a server serving acct-07's old origin read
// it from the base, and one serving the new origin read the record. (A
// base is checked against which records exist, not against their
// content: docs/store.md, "Faults".)
func baseFixture(t *testing.T) (dir string, a *Store) {
	t.Helper()
	dir = t.TempDir()
	a = testStores(t, dir, 1)[0]
	for i := range 30 {
		put(t, a, fmt.Sprintf("acct-%02d", i), policy.Rule{Origin: fmt.Sprintf("https://a%d.example", i)})
	}
	if err := a.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.writeBase(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	put(t, a, "acct-new", policy.Rule{Origin: "https://new.example"})
	put(t, a, "acct-03", policy.Rule{Origin: "https://replaced.example"})
	if _, err := a.Commit(context.Background(), []Change{{ID: "acct-05", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "atomsphere_cors", "t", "accounts", "acct-07"),
		[]byte(`{"account":"acct-07","rules":[{"origin":"https://record.example"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, a
}

// freshServer opens the store as a server without a snapshot would.
func freshServer(t *testing.T, dir string) *Store {
	t.Helper()
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	s := Open("t", "t\nfresh", dataDirFromEnv(), &certmagic.FileStorage{Path: dir}, zap.NewNop(), time.Hour)
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

func TestStoreBaseStartsANewServer(t *testing.T) {
	dir, _ := baseFixture(t)
	s := freshServer(t, dir)
	if !allows(s, "acct-07", "https://a7.example") || allows(s, "acct-07", "https://record.example") {
		t.Fatal("acct-07 is not served as the base has it: the base was not read")
	}
	// The changes after the base, read from the log.
	if !allows(s, "acct-new", "https://new.example") {
		t.Error("an account created after the base is missing")
	}
	if !allows(s, "acct-03", "https://replaced.example") || allows(s, "acct-03", "https://a3.example") {
		t.Error("an account replaced after the base has its old rules")
	}
	if allows(s, "acct-05", "https://a5.example") {
		t.Error("an account deleted after the base is still served")
	}
	if st := s.Status(); st.Serving != "store" || st.Accounts != 30 || st.Seq != 33 {
		t.Errorf("status %+v, want serving store, 30 accounts, seq 33", st)
	}
}

func TestStoreBaseNotUsedWhenItCannotBe(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(b string) string
	}{
		{"unreadable", func(b string) string { return b[:len(b)/2] }},
		{"of another epoch", func(b string) string {
			i := strings.Index(b, `"epoch":"`) + len(`"epoch":"`)
			return b[:i] + "x" + b[i+1:]
		}},
		{"newer than the store", func(b string) string { return strings.Replace(b, `"seq":30,`, `"seq":99,`, 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := baseFixture(t)
			path := filepath.Join(dir, "atomsphere_cors", "t", "base")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if d := tc.damage(string(b)); d == string(b) {
				t.Fatal("the damage changed nothing")
			} else if err := os.WriteFile(path, []byte(d), 0o600); err != nil {
				t.Fatal(err)
			}
			s := freshServer(t, dir)
			// Every account was read instead: acct-07 as its record has it.
			if allows(s, "acct-07", "https://a7.example") || !allows(s, "acct-07", "https://record.example") {
				t.Fatal("acct-07 served as the base has it: the damaged base was used")
			}
			if !allows(s, "acct-03", "https://replaced.example") || !allows(s, "acct-29", "https://a29.example") {
				t.Error("reading every account instead did not serve them")
			}
		})
	}
}

func TestStoreBaseWrittenEveryHundredChanges(t *testing.T) {
	dir := t.TempDir()
	a := testStores(t, dir, 1)[0]
	ctx := context.Background()
	baseSeq := func() (uint64, error) {
		b, err := os.ReadFile(filepath.Join(dir, "atomsphere_cors", "t", "base-seq"))
		if err != nil {
			return 0, err
		}
		var h Head
		_, err = fmt.Sscanf(string(b), `{"seq":%d`, &h.Seq)
		return h.Seq, err
	}
	for i := range BaseEvery - 1 {
		put(t, a, fmt.Sprintf("acct-%03d", i), policy.Rule{Origin: "https://a.example"})
	}
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	a.MaybeWriteBase(false)
	// Let a first base of the store be written, then no other until
	// baseEvery changes more.
	if err := testkit.Until(10*time.Second, 10*time.Millisecond, func() error { _, err := baseSeq(); return err }); err != nil {
		t.Fatalf("no base written: %v", err)
	}
	first, _ := baseSeq()
	if first != BaseEvery-1 {
		t.Fatalf("base at %d, want %d", first, BaseEvery-1)
	}
	put(t, a, "acct-x", policy.Rule{Origin: "https://x.example"})
	a.mu.Lock()
	a.baseAt = time.Time{} // as if a minute had passed
	a.mu.Unlock()
	_ = testkit.Until(10*time.Second, 10*time.Millisecond, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.baseBusy {
			return errors.New("busy")
		}
		return nil
	})
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	a.MaybeWriteBase(false)
	time.Sleep(200 * time.Millisecond)
	if got, _ := baseSeq(); got != first {
		t.Fatalf("base rewritten at %d after one change", got)
	}
	for i := range BaseEvery {
		put(t, a, fmt.Sprintf("acct-y%03d", i), policy.Rule{Origin: "https://y.example"})
	}
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.baseAt = time.Time{}
	a.mu.Unlock()
	a.MaybeWriteBase(false)
	want := uint64(2 * BaseEvery)
	if err := testkit.Until(10*time.Second, 10*time.Millisecond, func() error {
		if got, _ := baseSeq(); got != want {
			return fmt.Errorf("base at %d, want %d", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A server that reads every account while another server writes (a new
// server of a busy fleet) must get every account: file_system writes
// each key through a temporary file in the same directory, which a
// listing can meet and then not find.
func TestStoreFullReadDuringWrites(t *testing.T) {
	dir := t.TempDir()
	ss := testStores(t, dir, 2)
	writer := ss[0]
	ctx := context.Background()
	commitRange := func(s *Store, prefix string, lo, hi int) {
		t.Helper()
		var batch []Change
		for i := lo; i < hi; i++ {
			batch = append(batch, writeOf(t, s, fmt.Sprintf("%s-%05d", prefix, i), policy.Rule{Origin: fmt.Sprintf("https://a%d.example", i)}))
		}
		if _, err := s.Commit(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	commitRange(writer, "old", 0, 2000)
	stop := make(chan struct{})
	wrote := make(chan int)
	go func() {
		n := 0
		defer func() { wrote <- n }()
		for ; n < 200; n++ {
			select {
			case <-stop:
				return
			default:
			}
			commitRange(writer, "new", n*100, n*100+100)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for round := 0; round < 40 && time.Now().Before(deadline); round++ {
		reader := ss[1]
		reader.mu.Lock()
		reader.source = "none" // read everything again, as a new server does
		reader.mu.Unlock()
		if err := reader.poll(ctx); err != nil {
			continue // a failed read is retried; a short one is the bug
		}
		for i := 0; i < 2000; i += 97 {
			if id := fmt.Sprintf("old-%05d", i); !allows(reader, id, fmt.Sprintf("https://a%d.example", i)) {
				close(stop)
				<-wrote
				t.Fatalf("round %d: %s missing after a full read during writes (%d accounts served)", round, id, reader.view.Load().count)
			}
		}
		if st := reader.Status(); len(st.Refused) > 0 {
			close(stop)
			<-wrote
			t.Fatalf("round %d: records refused: %v", round, st.Refused)
		}
	}
	close(stop)
	if n := <-wrote; n < 5 {
		t.Fatalf("only %d commits written during the reads: the test did not race", n)
	}
}

// TestStoreBaseAfterImportsInARow: an import asks for the base at once,
// but imports in a row do not each rewrite it (every account, each
// time): a second one within baseMinInterval leaves it to the poller.
func TestStoreBaseAfterImportsInARow(t *testing.T) {
	dir := t.TempDir()
	a := testStores(t, dir, 1)[0]
	baseSeq := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "atomsphere_cors", "t", "base-seq"))
		return string(b)
	}
	idle := func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.baseBusy {
			return errors.New("busy")
		}
		return nil
	}
	put(t, a, "acct-1", policy.Rule{Origin: "https://a.example"})
	if err := a.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.MaybeWriteBase(true) // the first import
	if err := testkit.Until(10*time.Second, 10*time.Millisecond, func() error {
		if baseSeq() == "" {
			return errors.New("no base")
		}
		return idle()
	}); err != nil {
		t.Fatal(err)
	}
	first := baseSeq()
	put(t, a, "acct-2", policy.Rule{Origin: "https://a.example"})
	if err := a.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.MaybeWriteBase(true) // a second import, at once
	time.Sleep(200 * time.Millisecond)
	if err := idle(); err != nil || baseSeq() != first {
		t.Errorf("the base was rewritten by an import right after another (%q, then %q)", first, baseSeq())
	}
}

// TestStoreNumericAccountIDs: an account ID of digits has a key of the
// same shape as file_system's temporary files; it is an account all the
// same: served by a new server that starts from the base, and its
// corrupt record refused (and reported) by a full read, not skipped.
func TestStoreNumericAccountIDs(t *testing.T) {
	dir := t.TempDir()
	a := testStores(t, dir, 1)[0]
	put(t, a, "4242", policy.Rule{Origin: "https://n.example"})
	put(t, a, "777", policy.Rule{Origin: "https://m.example"})
	if err := a.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.writeBase(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	// The records are older than any temporary file is.
	old := time.Now().Add(-2 * time.Minute)
	for _, id := range []string{"4242", "777"} {
		if err := os.Chtimes(filepath.Join(dir, "atomsphere_cors", "t", "accounts", id), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if s := freshServer(t, dir); !allows(s, "4242", "https://n.example") {
		t.Errorf("a new server from the base does not serve account 4242: %+v", s.Status())
	}
	// A corrupt record of a digits ID: refused and reported by a full read.
	rec := filepath.Join(dir, "atomsphere_cors", "t", "accounts", "777")
	if err := os.WriteFile(rec, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(rec, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "atomsphere_cors", "t", "base")); err != nil {
		t.Fatal(err)
	}
	s := freshServer(t, dir)
	if st := s.Status(); st.Refused["777"] == "" {
		t.Errorf("the corrupt record of account 777 is not reported as refused: %+v", st)
	}
	if allows(s, "777", "https://m.example") {
		t.Error("account 777 is served from a corrupt record")
	}
}
