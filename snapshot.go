package atomspherecors

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The local snapshot: the last state of a store this server read, in
// Caddy's data directory, so that a server started while the storage is
// unreachable serves the rules it last had (docs/store.md, "Faults").
// One NDJSON file: a header line, then one record per account.

// snapshotEvery bounds how often the snapshot is written while the
// accounts change; it is also written when the store stops.
const snapshotEvery = 10 * time.Second

type snapshotHeader struct {
	Store string `json:"store"`
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

func (s *accountStore) snapshotPath() string {
	sum := sha256.Sum256([]byte(s.key))
	return filepath.Join(caddy.AppDataDir(), "atomsphere_cors", s.name+"-"+hex.EncodeToString(sum[:6])+".ndjson")
}

// writeSnapshot writes the accounts served now, atomically (a temporary
// file renamed over the last snapshot).
func (s *accountStore) writeSnapshot() error {
	s.mu.Lock()
	v, hdr := s.view.Load(), snapshotHeader{Store: s.name, Seq: s.seq, Epoch: s.epoch}
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
	enc := json.NewEncoder(w)
	_ = enc.Encode(hdr)
	var after string
	for {
		ids, more := v.idsAfter(after, 4096)
		for _, id := range ids {
			a, _ := v.get(id)
			_ = enc.Encode(record{Account: id, Rules: rulesOf(a)})
		}
		if !more || len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// loadSnapshot starts the store from its snapshot, when there is one.
func (s *accountStore) loadSnapshot() error {
	f, err := os.Open(s.snapshotPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(f, 1<<16))
	var hdr snapshotHeader
	if err := dec.Decode(&hdr); err != nil || hdr.Store != s.name {
		return fmt.Errorf("%s: no snapshot header", f.Name())
	}
	accounts := map[string]account{}
	for dec.More() {
		var rec record
		if err := dec.Decode(&rec); err != nil {
			return fmt.Errorf("%s: %v", f.Name(), err)
		}
		a, err := s.compile(rec.Account, rec.Rules)
		if err != nil {
			return fmt.Errorf("%s: %v", f.Name(), err)
		}
		accounts[rec.Account] = *a
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.view.Store(newView(accounts))
	s.seq, s.epoch, s.source = hdr.Seq, hdr.Epoch, "snapshot"
	return nil
}
