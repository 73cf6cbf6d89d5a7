// A connection's socket seen from its handler: cpp-httplib 0.11 (Debian's) hands a handler no
// socket, so a non-streamed request finds its own by the addresses httplib recorded, and checks
// between generated pieces whether the client has gone, to stop generating for nobody.
#pragma once
#include <string>

namespace lmtune::server {

// The open socket of this process whose peer is remote_addr:remote_port and whose own end is
// local_addr:local_port (numeric hosts, as httplib writes them), or -1 when there is none. Scans the
// process's descriptors once (/proc/self/fd); the socket stays open while its handler runs.
int find_connection_socket(const std::string& remote_addr, int remote_port, const std::string& local_addr,
                           int local_port);

// Whether the peer of socket fd has closed (or reset) the connection: a hang-up, an error, or a
// zero-byte peek. Data waiting (a pipelined request) does not count. Never blocks.
bool peer_closed(int fd);

}  // namespace lmtune::server
