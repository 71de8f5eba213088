package rulestore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"atomspherecors/internal/policy"
)

// An entity tag names one account's rules: the same rules in two
// accounts (every new account has none) give two tags.
func TestETagNamesTheAccount(t *testing.T) {
	r := []policy.Rule{{Origin: "https://a.example", Methods: []string{"GET"}}}
	if ETag("acct-a", nil) == ETag("acct-b", nil) || ETag("acct-a", r) == ETag("acct-b", r) {
		t.Error("two accounts with the same rules have the same ETag")
	}
	if ETag("acct-a", nil) != ETag("acct-a", []policy.Rule{}) || ETag("acct-a", r) == ETag("acct-a", nil) {
		t.Error("one account's ETag does not follow its rules")
	}
}

// A server that has not polled yet and takes a write its check refuses
// (412, or the stored rules unchanged) serves the account as stored from
// then on: what it answers is what it serves.
func TestRefusedEditServesTheStoredAccount(t *testing.T) {
	_, a, b := twoStores(t)
	ctx := context.Background()
	kept := policy.Rule{Origin: "https://kept.example", Methods: []string{"GET"}}
	gone := policy.Rule{Origin: "https://gone.example", Methods: []string{"GET"}}
	put(t, a, "acct", kept, gone)
	if allows(b, "acct", "https://kept.example") {
		t.Fatal("b already serves a's write: the test needs it not to have polled")
	}
	edit := func(ifMatch string, rules ...policy.Rule) error {
		c := writeOf(t, b, "acct", rules...)
		e := &Edit{ID: "acct", AbsentIsEmpty: true, After: RulesOf(*c.Acct)}
		if ifMatch != "" {
			e.IfMatch = []string{ifMatch}
		}
		c.Check = e.Check
		_, err := b.Commit(ctx, []Change{c})
		return err
	}
	var pe ErrPrecondition
	if err := edit(ETag("acct", nil), gone); !errors.As(err, &pe) {
		t.Fatalf("b's write with the tag of no rules: %v, want 412", err)
	}
	if !allows(b, "acct", "https://kept.example") || !allows(b, "acct", "https://gone.example") {
		t.Error("after its 412, b does not serve the rules that refused the write")
	}
	put(t, a, "acct", kept)
	if !allows(b, "acct", "https://gone.example") {
		t.Fatal("b already serves a's removal: the test needs it not to have polled")
	}
	if err := edit(ETag("acct", []policy.Rule{kept}), kept); !errors.Is(err, ErrUnchanged) {
		t.Fatalf("b's write of the stored rules: %v, want unchanged", err)
	}
	if allows(b, "acct", "https://gone.example") || !allows(b, "acct", "https://kept.example") {
		t.Error("b answered that the stored rules are its write, yet serves others")
	}
}

// If-Match as RFC 9110 §13.1.1 has it: "*" matches any current version
// and stands alone; a list matches by strong comparison; nothing matches
// an account with no current version.
func TestIfMatches(t *testing.T) {
	const tag = `"abc"`
	for _, tc := range []struct {
		field  string
		exists bool
		want   bool
	}{
		{`"abc"`, true, true},
		{`"x", "abc"`, true, true},
		{`*`, true, true},
		{` * `, true, true},
		{`*`, false, false},
		{`"abc"`, false, false},
		{`W/"abc"`, true, false},
		{`"x"`, true, false},
		{`"x", *`, true, false},
		{`*, "abc"`, true, false},
		{`"abc", *`, true, false},
	} {
		if got := ifMatches(tc.field, tag, tc.exists); got != tc.want {
			t.Errorf("If-Match %s (exists %v): %v, want %v", tc.field, tc.exists, got, tc.want)
		}
	}
	if msg := (ErrPrecondition{account: "a", absent: true}).Error(); !strings.Contains(msg, "does not exist") {
		t.Errorf("the 412 of an absent account says %q", msg)
	}
}

// ReadAccount serves what it read (a server that has not polled then
// serves the stored rules), but not while a local write or a poll is
// under way: either could apply a newer version between its read and
// its serving, which it would take back.
func TestReadAccountServesWhatItReadWhenIdle(t *testing.T) {
	_, a, b := twoStores(t)
	ctx := context.Background()
	rule := policy.Rule{Origin: "https://read.example", Methods: []string{"GET"}}
	put(t, a, "acct", rule)
	for _, busy := range []*sync.Mutex{&b.writeMu, &b.pollMu} {
		busy.Lock()
		rules, err := b.ReadAccount(ctx, "acct")
		busy.Unlock()
		if err != nil || len(rules) != 1 || rules[0].Origin != "https://read.example" {
			t.Fatalf("ReadAccount while busy: %v, %v; want the stored rules", rules, err)
		}
		if allows(b, "acct", "https://read.example") {
			t.Fatal("served what was read while a write or a poll was under way")
		}
	}
	if _, err := b.ReadAccount(ctx, "acct"); err != nil {
		t.Fatal(err)
	}
	if !allows(b, "acct", "https://read.example") {
		t.Error("an idle server does not serve what ReadAccount read")
	}
}
