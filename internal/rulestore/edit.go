package rulestore

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/quote"
)

// One account's edits, by the CORS page and the admin routes alike:
// entity tags and If-Match (RFC 9110 §8.8.3, §13.1.1) checked under the
// store's lock, the account's history kept in the store, and the audit
// log entry of each write.

// ETag is the strong entity tag of an account's rules as served
// (rulesOf): the same rules give the same tag on every server.
func ETag(rules []policy.Rule) string {
	if rules == nil {
		rules = []policy.Rule{}
	}
	b, _ := json.Marshal(rules)
	sum := sha256.Sum256(b)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:18]) + `"`
}

// servedRules are the rules of a stored account as served: none for an
// account without a valid record.
func servedRules(a *policy.Account) []policy.Rule {
	if a == nil {
		return []policy.Rule{}
	}
	return RulesOf(*a)
}

// ErrPrecondition is a write refused because its If-Match names another
// version of the account than the stored one: 412 (RFC 9110 §13.1.1).
type ErrPrecondition struct{ account string }

func (e ErrPrecondition) Error() string {
	return fmt.Sprintf("account %s was changed since it was read (If-Match does not match its current ETag): nothing written; read it again", quote.Value(e.account))
}

// ifMatches evaluates an If-Match field value against the current
// entity tag (RFC 9110 §13.1.1): "*" matches any current representation,
// otherwise one of the listed tags must equal it by strong comparison
// (a weak tag never does). exists says whether there is a current
// representation at all.
func ifMatches(field string, etag string, exists bool) bool {
	if !exists {
		return false
	}
	for t := range strings.SplitSeq(field, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// Edit is one write of one account through the page or the admin
// routes: its If-Match and, once the commit has read it under the
// store's lock, the account as it was.
type Edit struct {
	ID      string
	IfMatch []string // the request's If-Match lines; nil: unconditional
	// AbsentIsEmpty: an account without a record is an account
	// without rules (the page, whose GET always shows the account)
	// rather than no representation (the admin routes' 404).
	AbsentIsEmpty bool
	Before        []policy.Rule // the rules as stored before the write
	// After, when set, is the rules the write stores, as served: a
	// write of the stored rules is then refused with errUnchanged.
	After []policy.Rule
}

// ErrUnchanged is a write whose rules are the stored ones: the commit
// writes nothing (no log entry, no history entry) and the caller answers
// as if it had.
var ErrUnchanged = errors.New("the rules are unchanged: nothing written")

// Check is the change's check: it records the stored rules and
// evaluates If-Match against them.
func (e *Edit) Check(stored *policy.Account) error {
	e.Before = servedRules(stored)
	exists := stored != nil || e.AbsentIsEmpty
	if e.IfMatch != nil && !ifMatches(strings.Join(e.IfMatch, ","), ETag(e.Before), exists) {
		return ErrPrecondition{account: e.ID}
	}
	if e.After != nil && exists && slices.EqualFunc(e.Before, e.After, sameRule) {
		return ErrUnchanged
	}
	return nil
}

// checkChanges runs the checks of changes that have one, each with the
// account as stored, before the commit writes anything; s.writeMu and
// the storage lock are held, so the stored account cannot change
// between a check and the write.
func (s *Store) checkChanges(ctx context.Context, st certmagic.Storage, changes []Change) error {
	for _, c := range changes {
		if c.Check == nil {
			continue
		}
		var stored *policy.Account
		b, err := st.Load(ctx, s.keys.account(c.ID))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return err
		default:
			stored, _ = compileRecord(c.ID, b, policy.NewMethodCache())
		}
		if err := c.Check(stored); err != nil {
			return err
		}
	}
	return nil
}

// historyKeep is how many changes of an account its history keeps, and
// historyMinKeep how many it keeps however large they are; older ones
// go first once the history passes historyMaxBytes.
const (
	historyKeep     = 20
	historyMinKeep  = 10
	historyMaxBytes = 1 << 20
)

// historyEntry is one change of an account as GET /history shows it.
type historyEntry struct {
	Time  string        `json:"time"` // RFC 3339
	By    string        `json:"by"`
	Rules []policy.Rule `json:"rules"`
}

// History is the stored history of one account, newest first.
type History struct {
	Account string         `json:"account"`
	Changes []historyEntry `json:"changes"`
}

// ReadHistory reads an account's history from the storage (so that
// every server shows the same); an account never edited has none.
func (s *Store) ReadHistory(ctx context.Context, id string) (History, error) {
	st, _ := s.storage()
	h := History{Account: id, Changes: []historyEntry{}}
	b, err := st.Load(ctx, s.keys.history(id))
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, err
	}
	var stored History
	if err := json.Unmarshal(b, &stored); err != nil || stored.Account != id {
		return h, fmt.Errorf("history of account %s unreadable", quote.Value(id))
	}
	if stored.Changes != nil {
		h.Changes = stored.Changes
	}
	return h, nil
}

// recordHistory adds the changes that name a user (by) to their
// accounts' histories, under the store's lock that the commit holds. A
// history is a record of the rules, not the rules: a history the
// storage fails to take is logged, and the commit stands.
func (s *Store) recordHistory(ctx context.Context, st certmagic.Storage, changes []Change) {
	now := time.Now().UTC().Format(time.RFC3339)
	for _, c := range changes {
		if c.By == "" {
			continue
		}
		h, err := s.ReadHistory(ctx, c.ID)
		if err != nil {
			s.logger().Warn("account history unreadable: starting it again", zap.String("store", s.Name), zap.String("account", c.ID), zap.Error(err))
		}
		rules := []policy.Rule{}
		if c.Acct != nil {
			rules = RulesOf(*c.Acct)
		}
		h.Changes = slices.Insert(h.Changes, 0, historyEntry{Time: now, By: c.By, Rules: rules})
		h.Changes = h.Changes[:min(len(h.Changes), historyKeep)]
		b, _ := json.Marshal(h)
		for len(b) > historyMaxBytes && len(h.Changes) > historyMinKeep {
			h.Changes = h.Changes[:len(h.Changes)-1]
			b, _ = json.Marshal(h)
		}
		if err := st.Store(ctx, s.keys.history(c.ID), b); err != nil {
			s.logger().Warn("account history not written", zap.String("store", s.Name), zap.String("account", c.ID), zap.Error(err))
		}
	}
}

// sameRule reports whether two served rules are the same.
func sameRule(a, b policy.Rule) bool {
	return a.Origin == b.Origin && slices.Equal(a.Methods, b.Methods)
}
