package rulestore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/quote"
)

// The local snapshot: the last state of a store this server read, in
// Caddy's data directory, so that a server started while the storage is
// unreachable serves the rules it last had, and a restarted server
// serves at once (docs/store.md, "Faults"). It is read on every start,
// so it is a plain line format that reads fast, not JSON: a JSON header
// line, then one line per account,
//
//	<escaped ID> TAB <origin> SP <method>,<method>... TAB ...
//
// with the ID escaped as in storage keys, and origins and methods in
// their served form, which hold no space, tab or comma. Every account is
// validated again when it is read.

// snapshotEvery bounds how often the snapshot is written while the
// accounts change; it is also written when the store stops. A server
// that starts from an older one catches up through the log, so it need
// not be fresh: at 10^5 accounts it is 14 MB, and three servers writing
// theirs every 10 s on one disk held up the fsyncs of admin writes
// (PUT p99 105 ms against 12 ms).
const snapshotEvery = time.Minute

// snapshotFormat names the line format above; a snapshot in another
// format is not used (the store is read instead).
const snapshotFormat = "lines-1"

// snapshotHeader is the first line of a snapshot, and of the store's
// shared base (base.go), which has the same format.
type snapshotHeader struct {
	Store    string            `json:"store"`
	Format   string            `json:"format"`
	Seq      uint64            `json:"seq"`
	Epoch    string            `json:"epoch"`
	Accounts int               `json:"accounts"`
	Refused  map[string]string `json:"refused,omitempty"` // records refused, and why
}

// linesHeader is the header of the accounts of v; s.mu is held.
func (s *Store) linesHeader(v *accountsView) snapshotHeader {
	return snapshotHeader{Store: s.Name, Format: snapshotFormat, Seq: s.seq, Epoch: s.epoch,
		Accounts: v.count, Refused: maps.Clone(s.refused)}
}

// writeAccountLines writes hdr and the accounts of v in the line format.
// Errors are the writer's, seen at its Flush.
func writeAccountLines(w *bufio.Writer, hdr snapshotHeader, v *accountsView) {
	_ = json.NewEncoder(w).Encode(hdr)
	var after string
	for {
		ids, more := v.IDsAfter(after, 4096)
		for _, id := range ids {
			a, _ := v.Get(id)
			w.WriteString(EscapeID(id))
			for _, ao := range a.Origins {
				w.WriteByte('\t')
				w.WriteString(ao.Origin)
				w.WriteByte(' ')
				w.WriteString(strings.Join(ao.Methods.List, ","))
			}
			w.WriteByte('\n')
		}
		if !more || len(ids) == 0 {
			return
		}
		after = ids[len(ids)-1]
	}
}

// readAccountLines reads what writeAccountLines wrote: the header, which
// must name store, and the accounts.
func readAccountLines(r *bufio.Reader, store string) (snapshotHeader, map[string]policy.Account, error) {
	var hdr snapshotHeader
	line, err := r.ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &hdr) != nil || hdr.Store != store {
		return hdr, nil, errors.New("no header")
	}
	if hdr.Format != snapshotFormat {
		return hdr, nil, fmt.Errorf("format %s, not %s", quote.Value(hdr.Format), snapshotFormat)
	}
	accounts, err := readSnapshotLines(r, hdr.Accounts)
	return hdr, accounts, err
}

func (s *Store) snapshotPath() string {
	sum := sha256.Sum256([]byte(s.Key))
	return filepath.Join(s.DataDir, "atomsphere_cors", s.Name+"-"+hex.EncodeToString(sum[:6])+".ndjson")
}

// writeSnapshot writes the accounts served now, atomically (a temporary
// file renamed over the last snapshot).
func (s *Store) writeSnapshot() error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	s.mu.Lock()
	v := s.view.Load()
	hdr := s.linesHeader(v)
	s.dirty, s.snapAt = false, time.Now()
	s.mu.Unlock()

	path := s.snapshotPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriterSize(f, 1<<16)
	writeAccountLines(w, hdr, v)
	// Not synced to disk: a snapshot cut short by a crash is seen as
	// such (its last line, or its count of accounts) and not used.
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// loadSnapshot starts the store from its snapshot, when there is one.
// The lines are read in blocks that the CPUs parse and compile in
// parallel; one bad line, or a count that differs from the header's,
// refuses the whole snapshot.
func (s *Store) loadSnapshot() error {
	f, err := os.Open(s.snapshotPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	hdr, accounts, err := readAccountLines(bufio.NewReaderSize(f, 1<<16), s.Name)
	if err != nil {
		return fmt.Errorf("snapshot %s: %v", f.Name(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view.Store(newView(accounts))
	s.seq, s.epoch, s.source = hdr.Seq, hdr.Epoch, "snapshot"
	s.refused = map[string]string{}
	maps.Copy(s.refused, hdr.Refused)
	s.recheckRefused(hdr.Refused)
	return nil
}

// snapshotBlock is about how much of a snapshot one worker parses at a
// time.
const snapshotBlock = 1 << 20

// readSnapshotLines reads the account lines of a snapshot, want of them.
func readSnapshotLines(r *bufio.Reader, want int) (map[string]policy.Account, error) {
	type block struct {
		first int // line number of its first line in the file
		data  []byte
	}
	type compiled struct {
		ids   []string
		accts []policy.Account
		err   error
	}
	workers := min(max(runtime.GOMAXPROCS(0), 1), 8)
	blocks := make(chan block, workers)
	results := compileEach(workers, blocks, func(cache *policy.MethodCache, b block, emit func(compiled)) {
		var c compiled
		n := b.first
		for line := range bytes.Lines(b.data) {
			id, a, err := parseSnapshotLine(line, cache)
			if err != nil {
				c.err = fmt.Errorf("line %d: %v", n, err)
				break
			}
			c.ids, c.accts = append(c.ids, id), append(c.accts, a)
			n++
		}
		emit(c)
	})
	var readErr error
	go func() {
		defer close(blocks)
		first := 2 // the header is line 1
		for {
			data := make([]byte, snapshotBlock)
			n, err := io.ReadFull(r, data)
			data = data[:n]
			if err == nil { // read on to the end of the line
				rest, rerr := r.ReadBytes('\n')
				data = append(data, rest...)
				if rerr != nil && rerr != io.EOF {
					readErr = rerr
					return
				}
			}
			if len(data) > 0 {
				if data[len(data)-1] != '\n' {
					readErr = errors.New("the last line is cut off")
					return
				}
				blocks <- block{first, data}
				first += bytes.Count(data, []byte{'\n'})
			}
			if err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					readErr = err
				}
				return
			}
		}
	}()
	accounts := make(map[string]policy.Account, want)
	var firstErr error
	for c := range results {
		if c.err != nil && firstErr == nil {
			firstErr = c.err
		}
		for i, id := range c.ids {
			accounts[id] = c.accts[i]
		}
	}
	switch {
	case readErr != nil:
		return nil, readErr
	case firstErr != nil:
		return nil, firstErr
	case len(accounts) != want:
		return nil, fmt.Errorf("%d accounts, the header says %d", len(accounts), want)
	}
	return accounts, nil
}

// parseSnapshotLine reads and compiles one account line.
func parseSnapshotLine(line []byte, cache *policy.MethodCache) (string, policy.Account, error) {
	fields := strings.Split(strings.TrimSuffix(string(line), "\n"), "\t")
	id, err := UnescapeID(fields[0])
	if err != nil {
		return "", policy.Account{}, fmt.Errorf("account ID %s: %v", quote.Value(fields[0]), err)
	}
	rules := make([]policy.Rule, 0, len(fields)-1)
	for _, f := range fields[1:] {
		origin, methods, ok := strings.Cut(f, " ")
		if !ok {
			return "", policy.Account{}, fmt.Errorf("account %s: rule %s has no methods", quote.Value(id), quote.Value(f))
		}
		rules = append(rules, policy.Rule{Origin: origin, Methods: strings.Split(methods, ",")})
	}
	a, err := compileWith(id, rules, cache)
	if err != nil {
		return "", policy.Account{}, err
	}
	return id, *a, nil
}
