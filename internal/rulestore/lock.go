package rulestore

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/certmagic"
)

// lockWait bounds the wait for a store's lock; lockHoldLimit is the
// longest a writer holds it (one commit: one account, or one chunk of
// an import).
const (
	lockWait      = 30 * time.Second
	lockTry       = 5 * time.Second
	lockHoldLimit = 15 * time.Second
)

// lockStore takes the storage lock of a store. certmagic's file_system
// storage keeps a lock file fresh from a goroutine that outlives the
// lock and refreshes whatever lock file then has the name: a server
// killed while holding the lock would keep it for ever while the other
// servers write. A file_system lock file created more than
// lockHoldLimit ago (its "created" time, which refreshes keep) belongs
// to a dead writer and is removed.
func lockStore(ctx context.Context, st certmagic.Storage, name string) error {
	deadline := time.Now().Add(lockWait)
	for {
		lctx, cancel := context.WithTimeout(ctx, lockTry)
		err := st.Lock(lctx, name)
		timedOut := lctx.Err() != nil
		cancel()
		if err == nil {
			return nil
		}
		if !timedOut || ctx.Err() != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errStoreBusy
		}
		if fs, ok := st.(*certmagic.FileStorage); ok {
			breakDeadLock(fs, name)
		}
	}
}

func breakDeadLock(fs *certmagic.FileStorage, name string) {
	path := filepath.Join(fs.Path, "locks", certmagic.StorageKeys.Safe(name)+".lock")
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var meta struct {
		Created time.Time `json:"created"`
	}
	if json.Unmarshal(b, &meta) == nil && !meta.Created.IsZero() && time.Since(meta.Created) > lockHoldLimit {
		_ = os.Remove(path)
	}
}
