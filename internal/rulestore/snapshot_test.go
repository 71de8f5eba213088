package rulestore

// The local snapshot a server starts from (docs/store.md, "Faults"):
// what it holds reads back exactly, and a damaged one is not used.

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

// downStorage is a storage that cannot be read, as while the network to
// it is down.
type downStorage struct{ *memStorage }

func (downStorage) Load(context.Context, string) ([]byte, error) {
	return nil, errors.New("storage unreachable")
}

// snapshotAccounts are accounts whose IDs and origins exercise the line
// format: IDs that are escaped, IPv6 and punycode hosts, default
// methods, merged rules, an account without rules.
var snapshotAccounts = map[string][]policy.Rule{
	"account-1":   {{Origin: "https://a.example", Methods: []string{"GET", "POST"}}, {Origin: "http://localhost:8080"}},
	"with space":  {{Origin: "http://[::1]:9000", Methods: []string{"DELETE"}}},
	"tab\there":   {{Origin: "https://xn--mnchen-3ya.example"}},
	".leading":    {{Origin: "https://b.example", Methods: []string{"GET"}}, {Origin: "HTTPS://B.example:443", Methods: []string{"PUT"}}},
	"percent%41":  {{Origin: "http://1.2.3.4:81", Methods: []string{"PATCH", "GET"}}},
	"ünïcode":     {{Origin: "https://c.example"}},
	"no-rules":    {},
	"comma,colon": {{Origin: "https://d.example", Methods: []string{"HEAD", "put"}}},
}

func writeTestSnapshot(t *testing.T) (key string, want map[string][]policy.Rule) {
	t.Helper()
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	key = "snap\ntest"
	st := newMemStorage()
	s := Open("snap", key, dataDirFromEnv(), st, zap.NewNop(), time.Hour)
	want = map[string][]policy.Rule{}
	for id, rules := range snapshotAccounts {
		put(t, s, id, rules...)
		want[id] = RulesOf(s.Account(id))
	}
	if err := s.Destruct(); err != nil { // writes the snapshot
		t.Fatal(err)
	}
	return key, want
}

func TestSnapshotReadsBackWhatWasServed(t *testing.T) {
	key, want := writeTestSnapshot(t)
	s := Open("snap", key, dataDirFromEnv(), downStorage{newMemStorage()}, zap.NewNop(), time.Hour)
	defer func() { _ = s.Destruct() }()
	st := s.Status()
	if st.Serving != "snapshot" || st.Accounts != len(want) {
		t.Fatalf("serving %q with %d accounts, want the snapshot's %d", st.Serving, st.Accounts, len(want))
	}
	for id, rules := range want {
		a, ok := s.view.Load().Get(id)
		if !ok {
			t.Errorf("account %q missing", id)
			continue
		}
		if got := RulesOf(a); !reflect.DeepEqual(got, rules) && !(len(got) == 0 && len(rules) == 0) {
			t.Errorf("account %q: %v, want %v", id, got, rules)
		}
	}
	if !allows(s, ".leading", "https://b.example") || allows(s, "account-1", "https://evil.example") {
		t.Error("the snapshot's accounts do not decide as they did")
	}
}

func TestSnapshotDamagedIsNotUsed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(string) string
		why    string
	}{
		{"last line cut off", func(s string) string { return s[:len(s)-5] }, "cut off"},
		{"a line missing", func(s string) string {
			i := strings.Index(s, "\naccount-1\t")
			j := strings.IndexByte(s[i+1:], '\n')
			return s[:i] + s[i+1+j:]
		}, "the header says"},
		{"an origin that does not validate", func(s string) string {
			return strings.Replace(s, "https://a.example", "ftp://a.example", 1)
		}, `scheme "ftp"`},
		{"a rule without methods", func(s string) string {
			return strings.Replace(s, "https://a.example GET,POST", "https://a.example", 1)
		}, "has no methods"},
		{"another format", func(s string) string {
			return strings.Replace(s, `"format":"lines-1"`, `"format":"json"`, 1)
		}, `format "json"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := writeTestSnapshot(t)
			s := &Store{Name: "snap", Key: key, DataDir: dataDirFromEnv()}
			b, err := os.ReadFile(s.snapshotPath())
			if err != nil {
				t.Fatal(err)
			}
			damaged := tc.damage(string(b))
			if damaged == string(b) {
				t.Fatal("the damage changed nothing")
			}
			if err := os.WriteFile(s.snapshotPath(), []byte(damaged), 0o600); err != nil {
				t.Fatal(err)
			}
			s.view.Store(newView(nil))
			err = s.loadSnapshot()
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("loadSnapshot: %v, want an error with %q", err, tc.why)
			}
			if s.view.Load().count != 0 || s.source == "snapshot" {
				t.Fatal("a damaged snapshot was served")
			}
			// A server that starts on it and cannot read the storage fails closed.
			s2 := Open("snap", key, dataDirFromEnv(), downStorage{newMemStorage()}, zap.NewNop(), time.Hour)
			defer func() { _ = s2.Destruct() }()
			if st := s2.Status(); st.Serving != "none" || st.Accounts != 0 {
				t.Fatalf("serving %q with %d accounts, want none", st.Serving, st.Accounts)
			}
		})
	}
}
