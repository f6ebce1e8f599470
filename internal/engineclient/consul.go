package engineclient

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultConsulAddress is the address of Consul's HTTP API when none is
// set: the local agent.
const DefaultConsulAddress = "127.0.0.1:8500"

// ConsulOptions are the settings of a Consul API client.
type ConsulOptions struct {
	// Address of the HTTP API: "host:port" or "unix:///path" (what
	// api.Config takes). Default: DefaultConsulAddress.
	Address string
	// "http" or "https". Default: "https" when TLS is set, else "http";
	// TLS makes it "https".
	Scheme string
	// Datacenter; "" for the agent's own.
	Datacenter string
	// ACL token ("" falls back to CONSUL_HTTP_TOKEN, like every Consul
	// client).
	Token string
	// TLS builds the TLS settings, given the host of Address ("" when
	// Address is not host:port); nil for no TLS.
	TLS func(host string) (*tls.Config, error)
	// Idle connections kept per host.
	MaxIdleConnsPerHost int
}

// ConsulConfig returns the Consul API configuration for o and its
// transport (to close idle connections with). The transport sets no
// ResponseHeaderTimeout: blocking queries answer late on purpose, so a
// context must bound every request instead. The only error is one of
// o.TLS.
func ConsulConfig(o ConsulOptions) (*api.Config, *http.Transport, error) {
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: o.MaxIdleConnsPerHost,
	}
	address := o.Address
	if address == "" {
		address = DefaultConsulAddress
	}
	scheme := o.Scheme
	if o.TLS != nil {
		host, _, _ := net.SplitHostPort(address)
		tc, err := o.TLS(host)
		if err != nil {
			return nil, nil, err
		}
		transport.TLSClientConfig = tc
		scheme = "https"
	}
	if scheme == "" {
		scheme = "http"
	}
	return &api.Config{
		Address:    address,
		Scheme:     scheme,
		Datacenter: o.Datacenter,
		Token:      o.Token,
		HttpClient: &http.Client{Transport: transport},
	}, transport, nil
}
