package modules

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Listening sockets are shared by every config that listens on the same
// address. A reload registers the new server's handler on the socket before
// the old config stops, and the socket closes only when its last user lets go:
// no connection in the kernel's accept queue is ever dropped by a reload (with
// one socket per config and SO_REUSEPORT, closing the old socket would reset
// the connections queued on it).
var (
	listenersMu sync.Mutex
	listeners   = map[string]*sharedListener{}
)

type sharedListener struct {
	key    string
	ln     net.Listener
	logger *zap.Logger

	// handlers is the stack of registered handlers (guarded by listenersMu);
	// the newest one gets every new connection.
	handlers []*connHandler
	current  atomic.Pointer[connHandler]
	closed   atomic.Bool
}

type connHandler struct {
	serve func(net.Conn)
}

// listenShared registers serve for connections accepted on na at portOffset,
// creating the socket if no config listens there yet. The returned release
// unregisters it (and closes the socket if it was the last user).
func listenShared(ctx caddy.Context, na caddy.NetworkAddress, portOffset uint, logger *zap.Logger, serve func(net.Conn)) (release func(), err error) {
	key := na.Network + "/" + na.JoinHostPort(portOffset)
	h := &connHandler{serve: serve}
	listenersMu.Lock()
	defer listenersMu.Unlock()
	sl := listeners[key]
	if sl == nil {
		lnAny, err := na.Listen(ctx, portOffset, net.ListenConfig{})
		if err != nil {
			return nil, err
		}
		ln, ok := lnAny.(net.Listener)
		if !ok {
			if c, ok := lnAny.(interface{ Close() error }); ok {
				c.Close()
			}
			return nil, fmt.Errorf("%s: not a stream listener", key)
		}
		sl = &sharedListener{key: key, ln: ln, logger: logger}
		listeners[key] = sl
		go sl.accept()
	}
	sl.handlers = append(sl.handlers, h)
	sl.current.Store(h)
	var once sync.Once
	return func() { once.Do(func() { sl.unregister(h) }) }, nil
}

func (sl *sharedListener) unregister(h *connHandler) {
	listenersMu.Lock()
	defer listenersMu.Unlock()
	for i, x := range sl.handlers {
		if x == h {
			sl.handlers = append(sl.handlers[:i], sl.handlers[i+1:]...)
			break
		}
	}
	if n := len(sl.handlers); n > 0 {
		sl.current.Store(sl.handlers[n-1])
		return
	}
	sl.current.Store(nil)
	delete(listeners, sl.key)
	sl.closed.Store(true)
	sl.ln.Close()
}

func (sl *sharedListener) accept() {
	var backoff time.Duration
	for {
		c, err := sl.ln.Accept()
		if err != nil {
			if sl.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// out of file descriptors and the like: wait a little, as net/http does
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			sl.logger.Error("accept failed", zap.String("listener", sl.key), zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		h := sl.current.Load()
		if h == nil {
			c.Close()
			continue
		}
		go h.serve(c)
	}
}
