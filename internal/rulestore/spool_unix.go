//go:build unix

package rulestore

import (
	"errors"
	"syscall"
)

// processAlive reports whether process pid exists (kill(2) with signal
// 0 checks without signalling; EPERM means it exists as another user's).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
