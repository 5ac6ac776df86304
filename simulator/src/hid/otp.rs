//! The OTP interface: feature-report frames (serial, status).

use keyfloat_hal::backend::hid::otp::{crc16, FRAME_SIZE, REPORT_DATA_SIZE, SLOT_DEVICE_SERIAL};
use keyfloat_hal::backend::sim::SimKeySpec;

use super::{Device, Kind};

fn serial_u32(spec: &SimKeySpec) -> Option<u32> {
    spec.serial.as_str().parse().ok()
}

pub(super) fn otp_write(d: &mut Device, report: &[u8]) {
    if report[..7].iter().all(|&b| b == 0) && report[7] == 0xFF {
        d.otp.response = None; // reset
        return;
    }
    let trailer = report[7];
    let seq = usize::from(trailer & 0x1F);
    if trailer & 0x80 == 0 || seq >= FRAME_SIZE / REPORT_DATA_SIZE {
        return;
    }
    if seq == 0 {
        d.otp.frame = vec![0; FRAME_SIZE];
        d.otp.response = None;
    }
    if d.otp.frame.len() != FRAME_SIZE {
        return; // a frame must start with seq 0
    }
    d.otp.frame[seq * REPORT_DATA_SIZE..(seq + 1) * REPORT_DATA_SIZE].copy_from_slice(&report[..7]);
    if seq == FRAME_SIZE / REPORT_DATA_SIZE - 1 {
        let frame = std::mem::take(&mut d.otp.frame);
        let crc = u16::from_le_bytes([frame[65], frame[66]]);
        if crc != crc16(&frame[..64]) {
            return; // the key ignores a corrupted frame; the host sees no answer
        }
        let Kind::YubiKey { spec, interfaces } = &d.kind else {
            return;
        };
        if frame[64] == SLOT_DEVICE_SERIAL && interfaces.serial_api_visible {
            if let Some(serial) = serial_u32(spec) {
                let mut resp = serial.to_be_bytes().to_vec();
                let crc = !crc16(&resp);
                resp.extend_from_slice(&crc.to_le_bytes());
                d.otp.response = Some((resp, 0));
            }
        }
    }
}

pub(super) fn otp_read(d: &mut Device) -> [u8; 8] {
    let mut status = [0u8; 8];
    if let Kind::YubiKey { spec, .. } = &d.kind {
        status[1..4].copy_from_slice(&[spec.firmware.major, spec.firmware.minor, spec.firmware.patch]);
    }
    status[4] = d.otp.program_sequence;
    if d.otp_stall > 0 {
        d.otp_stall -= 1;
        status[7] = 0x80;
        return status;
    }
    match &mut d.otp.response {
        Some((resp, pos)) => {
            let chunks = resp.len().div_ceil(REPORT_DATA_SIZE);
            let mut r = [0u8; 8];
            if *pos < chunks {
                let chunk = &resp[*pos * REPORT_DATA_SIZE..resp.len().min((*pos + 1) * REPORT_DATA_SIZE)];
                r[..chunk.len()].copy_from_slice(chunk);
                r[7] = 0x40 | (*pos as u8 & 0x1F);
                *pos += 1;
            } else {
                r[7] = 0x40; // end of response, sequence 0
            }
            r
        }
        None => status,
    }
}
