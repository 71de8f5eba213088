package rulestore

// Store faults found by a review that saw only the docs (docs/store.md,
// "Faults"): a record the storage cannot give, a commit the storage
// fails part way, an account given twice in one commit, a head gone.

import (
	"context"
	"encoding/json"
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
)

func storeDir(dir, name string) string { return filepath.Join(dir, "atomsphere_cors", name) }

// A record that cannot be read while the rest of the storage answers
// (here a directory where the record should be) refuses its account
// alone after a few polls; the other changes, a delete among them,
// still reach every server.
func TestStoreUnreadableRecordDoesNotStopTheFleet(t *testing.T) {
	dir, a, b := twoStores(t)
	ctx := context.Background()
	put(t, a, "acct-1", policy.Rule{Origin: "https://partner.example"})
	if err := b.poll(ctx); err != nil || !allows(b, "acct-1", "https://partner.example") {
		t.Fatalf("b did not follow: %v", err)
	}
	// A change naming "blocked", whose record is a directory.
	var h Head
	raw, _ := os.ReadFile(filepath.Join(storeDir(dir, "t"), "head"))
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(storeDir(dir, "t"), "accounts", "blocked", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(storeDir(dir, "t"), "log", fmt.Sprintf("%020d", h.Seq+1)), []byte(`{"accounts":["blocked"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Commit(ctx, []Change{{ID: "acct-1", Delete: true}}); err != nil { // adopts the entry
		t.Fatal(err)
	}
	put(t, a, "acct-2", policy.Rule{Origin: "https://two.example"})
	var errs []error
	for range unreadableAfter + 1 {
		errs = append(errs, b.poll(ctx))
	}
	if errs[0] == nil {
		t.Error("the first poll that cannot read a record succeeded: it should fail and be retried")
	}
	if last := errs[len(errs)-1]; last != nil {
		t.Fatalf("b still cannot follow the store: %v", last)
	}
	if allows(b, "acct-1", "https://partner.example") {
		t.Error("acct-1 deleted, still allowed on b")
	}
	if !allows(b, "acct-2", "https://two.example") {
		t.Error("acct-2 created, not served by b")
	}
	if why := b.Status().Refused["blocked"]; !strings.Contains(why, "record unreadable") {
		t.Errorf("b's status does not list the unreadable record: %q", why)
	}
	// Once the record can be read, it is served.
	if err := os.RemoveAll(filepath.Join(storeDir(dir, "t"), "accounts", "blocked")); err != nil {
		t.Fatal(err)
	}
	put(t, a, "blocked", policy.Rule{Origin: "https://unblocked.example"})
	if err := b.poll(ctx); err != nil || !allows(b, "blocked", "https://unblocked.example") || b.Status().Refused["blocked"] != "" {
		t.Errorf("the repaired record is not served: %v %v", err, b.Status().Refused)
	}
}

// A commit the storage fails part way publishes what it wrote, says how
// much, and every server then serves what the storage holds.
func TestStoreCommitFailingPartWayIsPublished(t *testing.T) {
	dir, a, b := twoStores(t)
	ctx := context.Background()
	put(t, a, "victim", policy.Rule{Origin: "https://old.example"})
	if err := os.MkdirAll(filepath.Join(storeDir(dir, "t"), "accounts", "zz-blocked", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	var batch []Change
	for _, id := range []string{"victim", "new-1", "zz-blocked"} {
		batch = append(batch, writeOf(t, a, id, policy.Rule{Origin: "https://new.example"}))
	}
	_, err := a.Commit(ctx, batch)
	var ce *CommitError
	if !errors.As(err, &ce) || ce.written != 2 || !ce.published {
		t.Fatalf("commit: %v, want 2 accounts written and published", err)
	}
	if err := os.RemoveAll(filepath.Join(storeDir(dir, "t"), "accounts", "zz-blocked")); err != nil { // the fault ends
		t.Fatal(err)
	}
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		if !allows(s, "victim", "https://new.example") || !allows(s, "new-1", "https://new.example") || allows(s, "victim", "https://old.example") {
			t.Errorf("store %s does not serve the two accounts written", s.Key)
		}
		if allows(s, "zz-blocked", "https://new.example") {
			t.Errorf("store %s serves the account that was not written", s.Key)
		}
	}
}

// An account given twice in one commit (an import naming it on two
// lines): the last wins, on disk and on every server.
func TestStoreCommitAccountTwiceLastWins(t *testing.T) {
	_, a, b := twoStores(t)
	var batch []Change
	for i := range 300 {
		for _, o := range []string{"https://old.example", "https://new.example"} {
			batch = append(batch, writeOf(t, a, fmt.Sprintf("dup-%03d", i), policy.Rule{Origin: o}))
		}
	}
	existed, err := a.Commit(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(existed) != 300 {
		t.Errorf("%d accounts reported for 300 given twice", len(existed))
	}
	b.mu.Lock()
	b.source = "none" // read every record, as a new server does
	b.mu.Unlock()
	if err := b.poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		id := fmt.Sprintf("dup-%03d", i)
		for _, s := range []*Store{a, b} {
			if allows(s, id, "https://old.example") || !allows(s, id, "https://new.example") {
				t.Fatalf("%s on %s: the first of two rules lists won", id, s.Key)
			}
		}
	}
}

// A head gone from a store this server has read (the storage emptied,
// or a mount gone) keeps the rules read, as an unreachable storage does,
// and writes are refused: written there, they would start a store that
// no other server reads, and a delete would answer 404 while every other
// server kept the account.
func TestStoreHeadGoneKeepsTheRules(t *testing.T) {
	dir, a, b := twoStores(t)
	ctx := context.Background()
	put(t, a, "acct-1", policy.Rule{Origin: "https://one.example"})
	if err := b.poll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(storeDir(dir, "t"), storeDir(dir, "t.away")); err != nil { // the mount goes
		t.Fatal(err)
	}
	if err := b.poll(ctx); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("poll of a store without head: %v, want an error", err)
	}
	if !allows(b, "acct-1", "https://one.example") {
		t.Error("the rules read were dropped")
	}
	for _, c := range []Change{{ID: "acct-1", Delete: true}, writeOf(t, b, "acct-2", policy.Rule{Origin: "https://two.example"})} {
		if _, err := b.Commit(ctx, []Change{c}); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("write of %s to a store without head: %v, want it refused", c.ID, err)
		}
	}
	if _, err := os.Stat(storeDir(dir, "t")); err == nil {
		t.Error("a refused write created a store")
	}
	if err := os.Rename(storeDir(dir, "t.away"), storeDir(dir, "t")); err != nil { // the mount is back
		t.Fatal(err)
	}
	if err := b.poll(ctx); err != nil || !allows(b, "acct-1", "https://one.example") || allows(b, "acct-2", "https://two.example") {
		t.Errorf("after the mount is back: %v", err)
	}

	// A store emptied on purpose is started over by a server that has
	// not read it (docs/store.md, "Faults"); the others follow.
	if err := os.RemoveAll(storeDir(dir, "t")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	fresh := Open("t", "t\nfresh", dataDirFromEnv(), &certmagic.FileStorage{Path: dir}, zap.NewNop(), time.Hour)
	defer func() { _ = fresh.Destruct() }()
	put(t, fresh, "acct-3", policy.Rule{Origin: "https://three.example"})
	if err := b.poll(ctx); err != nil || !allows(b, "acct-3", "https://three.example") || allows(b, "acct-1", "https://one.example") {
		t.Errorf("b does not follow the store started over: %v", err)
	}
}

// A record refused because it could not be read when a base or a
// snapshot was written is read again by the server that starts from it.
func TestStoreRefusedInBaseReadAgain(t *testing.T) {
	dir := t.TempDir()
	a := testStores(t, dir, 1)[0]
	ctx := context.Background()
	put(t, a, "acct-1", policy.Rule{Origin: "https://one.example"})
	put(t, a, "acct-2", policy.Rule{Origin: "https://two.example"})
	if err := a.poll(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.refused["acct-2"] = "record unreadable, read again at every poll: a storage error then"
	a.view.Store(a.view.Load().with(map[string]*policy.Account{"acct-2": nil}))
	a.mu.Unlock()
	if err := a.writeBase(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := a.writeSnapshot(); err != nil {
		t.Fatal(err)
	}
	fromSnap := Open("t", a.Key, dataDirFromEnv(), downStorage{newMemStorage()}, zap.NewNop(), time.Hour)
	defer func() { _ = fromSnap.Destruct() }()
	if fromSnap.Status().Serving != "snapshot" || len(fromSnap.unreadableIDs()) != 1 {
		t.Errorf("serving %s; the snapshot's refused record is not read again at the next poll: %v",
			fromSnap.Status().Serving, fromSnap.unreadableIDs())
	}
	fromBase := freshServer(t, dir)
	if !allows(fromBase, "acct-2", "https://two.example") || fromBase.Status().Refused["acct-2"] != "" {
		t.Errorf("a new server does not read the refused record again: %v", fromBase.Status().Refused)
	}
}
