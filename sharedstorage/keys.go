package sharedstorage

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"
)

// Defaults shared by both modules.
const (
	defaultPrefix  = "caddy/"
	defaultTimeout = 10 * time.Second
	defaultLockTTL = 15 * time.Second
)

// errEmptyKey is returned for a file operation without a key.
var errEmptyKey = errors.New("empty storage key")

// namespaces are the key prefixes of one storage: data under prefix, and
// the locks and modification times beside it.
type namespaces struct {
	data  string // the prefix, ending in "/"
	locks string // prefix with ".locks/" for its final "/"
	meta  string // prefix with ".meta/" for its final "/"
}

// newNamespaces derives the namespaces from a configured prefix ("" means
// the default; a missing final "/" is added).
func newNamespaces(prefix string) namespaces {
	if prefix == "" {
		prefix = defaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	base := strings.TrimSuffix(prefix, "/")
	return namespaces{data: prefix, locks: base + ".locks/", meta: base + ".meta/"}
}

// cleanKey turns a certmagic key into its canonical form: no leading or
// trailing "/", no empty components.
func cleanKey(key string) string {
	if !strings.Contains(key, "//") && !strings.HasPrefix(key, "/") && !strings.HasSuffix(key, "/") {
		return key
	}
	parts := strings.FieldsFunc(key, func(r rune) bool { return r == '/' })
	return strings.Join(parts, "/")
}

// dir is the engine prefix of everything below key ("" is the root).
func (n namespaces) dir(key string) string {
	if key == "" {
		return n.data
	}
	return n.data + key + "/"
}

// notExist is certmagic's error for a missing key.
func notExist(op, key string) error {
	return &fs.PathError{Op: op, Path: key, Err: fs.ErrNotExist}
}

// tooLarge is the error for a value over the engine's limit.
func tooLarge(engine, key string, size, limit int) error {
	return fmt.Errorf("storing %q: the value has %d bytes, more than the %d that %s accepts in one value; it was not sent", key, size, limit, engine)
}

// children lists what is below dir given every key below it (relative to
// the data prefix): with recursive, every key and every intermediate
// "directory"; otherwise the direct children only, files and directories
// alike, as certmagic's FileStorage does. The result is sorted.
func children(dir string, keys []string, recursive bool) []string {
	base := ""
	if dir != "" {
		base = dir + "/"
	}
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, base)
		if !ok || rest == "" {
			continue
		}
		if !recursive {
			first, _, _ := strings.Cut(rest, "/")
			seen[base+first] = struct{}{}
			continue
		}
		for i := 0; i < len(rest); i++ {
			if rest[i] == '/' {
				seen[base+rest[:i]] = struct{}{}
			}
		}
		seen[base+rest] = struct{}{}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
