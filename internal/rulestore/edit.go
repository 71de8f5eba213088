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
// (rulesOf): the same account with the same rules gives the same tag on
// every server. The account ID is part of it, so that a tag read for one
// account never matches another's (two new accounts both have no rules):
// a tab that read account A, whose user then signs in as B elsewhere,
// cannot save A's edit into B (RFC 9110 §8.8.3: a tag identifies one
// representation of one resource).
func ETag(id string, rules []policy.Rule) string {
	if rules == nil {
		rules = []policy.Rule{}
	}
	b, _ := json.Marshal(struct {
		Account string        `json:"account"`
		Rules   []policy.Rule `json:"rules"`
	}{id, rules})
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
type ErrPrecondition struct {
	account string
	absent  bool // the account has no current version at all
}

func (e ErrPrecondition) Error() string {
	if e.absent {
		return fmt.Sprintf("account %s does not exist, so no If-Match matches it (RFC 9110 §13.1.1): nothing written; write it without If-Match to create it", quote.Value(e.account))
	}
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
	tags := strings.Split(field, ",")
	match := false
	for _, t := range tags {
		switch t = strings.TrimSpace(t); {
		case t == "*" && len(tags) > 1:
			// "*" stands alone (If-Match = "*" / #entity-tag): mixed
			// with tags, the field is malformed and matches nothing.
			return false
		case t == "*", t == etag:
			match = true
		}
	}
	return match
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
	if e.IfMatch != nil && !ifMatches(strings.Join(e.IfMatch, ","), ETag(e.ID, e.Before), exists) {
		return ErrPrecondition{account: e.ID, absent: !exists}
	}
	if e.After != nil && exists && slices.EqualFunc(e.Before, e.After, sameRule) {
		return ErrUnchanged
	}
	return nil
}

// checkChanges runs the checks of changes that have one, each with the
// account as stored, before the commit writes anything; s.writeMu and
// the storage lock are held, so the stored account cannot change
// between a check and the write. Each checked change keeps the rules as
// stored, for its history entry.
//
// A check that refuses the write (If-Match names another version, or
// the rules are the stored ones) has just read the account as the
// storage holds it: this server serves that from its next request on,
// instead of waiting for its next poll. So the answer and the server
// agree: a write acknowledged as unchanged is served here, and after a
// 412 the next read here shows the version that refused it.
func (s *Store) checkChanges(ctx context.Context, st certmagic.Storage, changes []Change) error {
	for i, c := range changes {
		if c.Check == nil {
			continue
		}
		stored, why, err := s.loadRecord(ctx, st, c.ID)
		if err != nil {
			return err
		}
		changes[i].before = servedRules(stored)
		err = c.Check(stored)
		if why != "" && errors.Is(err, ErrUnchanged) {
			// A refused record allows no origin: a write of no rules is
			// unchanged to the check, but must replace the record.
			err = nil
		}
		if err != nil {
			var pe ErrPrecondition
			switch {
			case !errors.Is(err, ErrUnchanged) && !errors.As(err, &pe):
			case why != "":
				s.refreshRefused(c.ID, why)
			default:
				s.refresh(c.ID, stored)
			}
			return err
		}
	}
	return nil
}

// ReadAccount reads one account as the storage holds it now and serves
// that on this server from its next request on, as a refused write does:
// for the CORS page, which shows an account's rules, tests an origin
// against them and lists its history, and must not show rules older
// than the history it reads from the storage (a server that has not
// polled yet). It returns the account's rules as served (none without a
// record). When the storage cannot be read, it returns the account as this
// server serves it and the error. A record the storage holds but that
// is refused (it does not decode, names another account, or has a rule
// a config would refuse) allows no origin, as every server serves it
// once it polls: this server serves it so from then on, and it returns
// no rules and ErrRecordRefused, so that a save (whose If-Match is then
// the version of no rules) repairs it.
//
// It serves what it read only while no local write and no poll is under
// way (it would not wait behind an import): either could apply a newer
// version between its read and its serving, which it would then take
// back. Otherwise it only reads, and the write or poll brings the
// account.
func (s *Store) ReadAccount(ctx context.Context, id string) ([]policy.Rule, error) {
	serve := s.writeMu.TryLock()
	if serve {
		defer s.writeMu.Unlock()
		if serve = s.pollMu.TryLock(); serve {
			defer s.pollMu.Unlock()
		}
	}
	st, _ := s.storage()
	stored, why, err := s.loadRecord(ctx, st, id)
	switch {
	case err != nil:
		return servedRules(s.servedAccount(id)), err
	case why != "":
		if serve {
			s.refreshRefused(id, why)
		}
		return []policy.Rule{}, fmt.Errorf("%w: %s", ErrRecordRefused, why)
	}
	if serve {
		s.refresh(id, stored)
	}
	return servedRules(stored), nil
}

// loadRecord reads and compiles one account's record: nil without a
// record; why says why a record the storage holds is refused; err is a
// storage that could not be read.
func (s *Store) loadRecord(ctx context.Context, st certmagic.Storage, id string) (stored *policy.Account, why string, err error) {
	b, err := st.Load(ctx, s.keys.account(id))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, "", nil
	case err != nil:
		return nil, "", err
	}
	stored, why = compileRecord(id, b, policy.NewMethodCache())
	return stored, why, nil
}

// ErrRecordRefused is an account whose record the storage holds but that
// is refused: the account allows no origin until it is written again.
var ErrRecordRefused = errors.New("the account's record is refused")

// refreshRefused serves an account whose record is refused as every
// server does once it reads it: allowing no origin, listed as refused.
func (s *Store) refreshRefused(id, why string) {
	s.refresh(id, nil)
	logger := s.logger()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noteRefused(logger, map[string]string{id: why})
}

// servedAccount is the account as this server serves it, nil when it
// serves none.
func (s *Store) servedAccount(id string) *policy.Account {
	if a, ok := s.view.Load().Get(id); ok {
		return &a
	}
	return nil
}

// refresh serves one account as the storage holds it (nil: no record),
// read under the storage lock or while no local write or poll is under
// way; polls that started before it do not overwrite it, as for a
// commit's own changes.
func (s *Store) refresh(id string, stored *policy.Account) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.source == "none" {
		return // never loaded: one account is not the store
	}
	if cur, ok := s.view.Load().Get(id); ok == (stored != nil) && (!ok || slices.EqualFunc(RulesOf(cur), RulesOf(*stored), sameRule)) {
		return // served already
	}
	s.gen++
	s.local[id] = s.gen
	delete(s.refused, id)
	s.view.Store(s.view.Load().with(map[string]*policy.Account{id: stored}))
	s.dirty = true
}

// historyKeep is how many changes of an account its history keeps, and
// historyMinKeep how many it keeps however large they are; older ones
// go first once the history passes historyMaxBytes.
const (
	historyKeep     = 20
	historyMinKeep  = 10
	historyMaxBytes = 1 << 20
)

// historyEntry is one change of an account as GET /history shows it:
// the rules after it and, for changes recorded by this version, before
// it (absent in older entries).
type historyEntry struct {
	Time   string         `json:"time"` // RFC 3339
	By     string         `json:"by"`
	Rules  []policy.Rule  `json:"rules"`
	Before *[]policy.Rule `json:"before,omitempty"`
}

// History is the stored history of one account, newest first. Note, when
// set, says what the history lacks (earlier changes it could not read).
type History struct {
	Account string         `json:"account"`
	Changes []historyEntry `json:"changes"`
	Note    string         `json:"note,omitempty"`
}

// ErrHistoryUnreadable is a stored history that does not decode: the
// storage holds it, but no entry of it can be shown. ReadHistory then
// returns an empty history whose note says so; the next write sets it
// aside and starts again.
var ErrHistoryUnreadable = errors.New("history unreadable")

// ReadHistory reads an account's history from the storage (so that
// every server shows the same); an account never edited has none.
func (s *Store) ReadHistory(ctx context.Context, id string) (History, error) {
	st, _ := s.storage()
	h, _, err := s.readHistory(ctx, st, id)
	return h, err
}

// readHistory reads an account's history and returns the stored bytes.
// A history that decodes only in part keeps the entries that do (and
// says so in its note); one that does not decode at all is
// ErrHistoryUnreadable.
func (s *Store) readHistory(ctx context.Context, st certmagic.Storage, id string) (History, []byte, error) {
	h := History{Account: id, Changes: []historyEntry{}}
	b, err := st.Load(ctx, s.keys.history(id))
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil, nil
	}
	if err != nil {
		return h, nil, err
	}
	var stored History
	if err := json.Unmarshal(b, &stored); err == nil && stored.Account == id {
		if stored.Changes != nil {
			// No more than a history keeps, whatever the storage holds.
			h.Changes = stored.Changes[:min(len(stored.Changes), historyKeep)]
		}
		h.Note = stored.Note
		return h, b, nil
	}
	// Keep what can be kept: the entries that decode, in order.
	var raw struct {
		Account string            `json:"account"`
		Changes []json.RawMessage `json:"changes"`
		Note    string            `json:"note"`
	}
	if err := json.Unmarshal(b, &raw); err != nil || raw.Account != id {
		h.Note = historyGapNote
		return h, b, fmt.Errorf("%w: account %s", ErrHistoryUnreadable, quote.Value(id))
	}
	for _, r := range raw.Changes {
		var e historyEntry
		if json.Unmarshal(r, &e) == nil && e.Time != "" && len(h.Changes) < historyKeep {
			h.Changes = append(h.Changes, e)
		}
	}
	h.Note = historyGapNote
	return h, b, nil
}

// historyGapNote is what a history says once changes were lost from it
// (a record the storage could not decode, set aside).
const historyGapNote = "Some earlier changes could not be read and are not listed."

// The reasons a write's history entry was not kept as it should be, for
// the write's answer (Change.HistoryGap): the change is stored and
// served either way.
const (
	HistoryNotRecorded = "the change was saved, but could not be added to the list of recent changes"
	HistoryRestarted   = "the change was saved; the earlier list of recent changes could not be read, so it starts again here"
)

// recordHistory adds the changes that name a user (by) to their
// accounts' histories, under the store's lock that the commit holds. A
// history is a record of the rules, not the rules: a history the
// storage fails to take is logged and reported to the change's
// HistoryGap, and the commit stands. A history the storage cannot read
// is not written over (it may be readable again); one it reads but
// cannot decode is set aside (history-unreadable/<account>) and started
// again.
func (s *Store) recordHistory(ctx context.Context, st certmagic.Storage, changes []Change) {
	now := time.Now().UTC().Format(time.RFC3339)
	for _, c := range changes {
		if c.By == "" {
			continue
		}
		gap := func(why, answer string, err error) {
			s.logger().Warn("account history "+why, zap.String("store", s.Name), zap.String("account", c.ID), zap.Error(err))
			if c.HistoryGap != nil {
				c.HistoryGap(answer)
			}
		}
		h, old, err := s.readHistory(ctx, st, c.ID)
		restarted := false
		switch {
		case errors.Is(err, ErrHistoryUnreadable):
			if aerr := st.Store(ctx, s.keys.historyAside(c.ID), old); aerr != nil {
				gap("unreadable, and could not be set aside: not written", HistoryNotRecorded, aerr)
				continue
			}
			h.Note, restarted = historyGapNote, true
		case err != nil:
			gap("not readable: not written", HistoryNotRecorded, err)
			continue
		}
		rules := []policy.Rule{}
		if c.Acct != nil {
			rules = RulesOf(*c.Acct)
		}
		e := historyEntry{Time: now, By: c.By, Rules: rules}
		if c.before != nil {
			before := c.before
			e.Before = &before
		}
		h.Changes = slices.Insert(h.Changes, 0, e)
		h.Changes = h.Changes[:min(len(h.Changes), historyKeep)]
		b, _ := json.Marshal(h)
		for len(b) > historyMaxBytes && len(h.Changes) > historyMinKeep {
			h.Changes = h.Changes[:len(h.Changes)-1]
			b, _ = json.Marshal(h)
		}
		if err := st.Store(ctx, s.keys.history(c.ID), b); err != nil {
			gap("not written", HistoryNotRecorded, err)
			continue
		}
		if restarted {
			gap("unreadable: set aside (history-unreadable/) and started again", HistoryRestarted, ErrHistoryUnreadable)
		}
	}
}

// sameRule reports whether two served rules are the same.
func sameRule(a, b policy.Rule) bool {
	return a.Origin == b.Origin && slices.Equal(a.Methods, b.Methods)
}
