/* An image that does not fit a small enclave: 1.5 GiB of .bss (the loader
 * must place p_memsz, not only the file's bytes). Natively it runs (the
 * kernel maps .bss lazily) and prints "toobig: ok"; in an LWK enclave with
 * 1 GiB of memory it must be refused before it starts, naming the size.
 */
#include <stdio.h>

static char big[1536ul << 20];

int main(void)
{
    big[sizeof big - 1] = 1;
    printf("toobig: ok (%zu MiB of bss)\n", sizeof big >> 20);
    return big[sizeof big - 1] == 1 ? 0 : 1;
}
