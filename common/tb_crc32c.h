/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI/ext4. */
#ifndef TB_CRC32C_H
#define TB_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* Continue a CRC: crc = tb_crc32c(0, a, n); crc = tb_crc32c(crc, b, m); */
uint32_t tb_crc32c(uint32_t crc, const void *data, size_t len);

#endif
