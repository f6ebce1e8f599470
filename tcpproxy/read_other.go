//go:build !unix

package tcpproxy

import "errors"

// rawReads is false: outside Unix every source is read through Go's Read.
const rawReads = false

func sysRead(uintptr, []byte) (int, bool, error) {
	return 0, false, errors.New("tcpproxy: raw reads are not supported here")
}
